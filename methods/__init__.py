"""Few-shot image generation methods: GAN baselines (DCGAN, WGAN, WGAN-GP, conditional GAN) and their shared parts.

Each method is one module (``methods.dcgan``, ``methods.wgan``, ...) implementing :class:`harness.api.GenerativeMethod`;
the network blocks live in ``methods.nets``, DiffAugment in ``methods.diffaugment`` and the one adversarial training
loop in ``methods.adversarial``. Nothing is imported here so that ``import methods`` stays cheap.
"""
