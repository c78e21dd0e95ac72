import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from perception.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


def _build(preset, tokenizer, lora=False):
    from perception.model import PerceptionModel
    from perception.presets import get_preset

    torch.manual_seed(0)
    m = PerceptionModel(get_preset(preset), tokenizer)
    if lora:
        from perception.lora import apply_lora

        apply_lora(m)
    return m.eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    """The tiny preset, randomly initialised."""
    return _build("tiny", tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_llava_model(tiny_tokenizer):
    """LlavaForConditionalGeneration from a tiny config + SAM-class mask head + LoRA."""
    return _build("tiny-llava", tiny_tokenizer, lora=True)


@pytest.fixture(scope="session")
def scene():
    from perception.data.shapesref import make_sample

    return make_sample(123, tasks=["ground_A"])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (servers and torchrun rendezvous in tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
