"""PerceptionGPT: perception tokens on a vision LLM (Pi et al., arXiv 2311.06612).

Public API::

    import perception
    pipe = perception.load_pipeline("tiny")
    ans = pipe.chat(image, "Find the red circle.")
    ans.text, ans.objects, ans.history
    pipe.segment_point(image, (x, y))
"""

from perception.limits import DEFAULT_LIMITS, Limits
from perception.pipeline import Pipeline, load_pipeline
from perception.types import Answer, Grounding, Region

__all__ = ["load_pipeline", "Pipeline", "Region", "Grounding", "Answer", "Limits", "DEFAULT_LIMITS"]
__version__ = "0.1.0"
