"""The skip strategies: which routed experts a token keeps (`strategies.py`: SkipRule and
every rule of README "Skip strategies") and the router arithmetic they act on
(`routing.py`: DeepSeek-V3's grouped, biased top-k and the softmax routers).
"""

from skipbench import lazy_exports

API = {"SkipRule": "strategies", "RouterSpec": "routing", "LayerRule": "routing", "route": "routing"}
__all__ = list(API)
__getattr__ = lazy_exports(__name__, API)
