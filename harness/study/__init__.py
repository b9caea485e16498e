"""Human evaluation studies (see harness.study.manifest)."""
