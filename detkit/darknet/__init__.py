"""darknet cfg/weights support: ``cfg`` (text -> sections), ``specs`` (validated layer specs,
class-count propagation, cfg writer), ``layers``/``model`` (specs -> ``nn.Module``), ``weights``."""
