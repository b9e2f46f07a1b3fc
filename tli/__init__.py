"""Targeted Lexical Injection toolkit."""

import logging


class _NoHubKernelNotice(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning.

    bitsandbytes (imported by peft, so by any tli command) tries at import to fetch an optional CPU
    kernel from the Hugging Face hub and, failing, keeps its own bundled CPU NF4 kernel: NF4 still
    works (tests/test_nf4.py). Installed here because peft imports bitsandbytes before tli.models runs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelNotice())
