"""Targeted Lexical Injection toolkit."""

import logging
import warnings

# The name on the package index ("tli" there is an unrelated Twitter client); the import name stays `tli`.
DISTRIBUTION = "targeted-lexical-injection"


class _NoHubKernelNotice(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning.

    bitsandbytes (imported by peft, so by any tli command) tries at import to fetch an optional CPU
    kernel from the Hugging Face hub and, failing, keeps its own bundled CPU NF4 kernel: NF4 still
    works (tests/test_nf4.py). Installed here because peft imports bitsandbytes before tli.models runs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelNotice())

# PEFT (0.21) calls transformers' (5.23) deprecated `is_gradient_checkpointing` whenever LoRA is attached:
# a message between two libraries that a tli user can do nothing about, printed on every `tli train`.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
