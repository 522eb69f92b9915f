"""What several ``cai`` commands share: logging setup, the queue URL flags, the error line."""

from __future__ import annotations

import logging
import sys
import warnings


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "vllm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _show_config_deprecations() -> None:
    """A deprecated config key prints one line, ``cai: warning: FILE: old is deprecated, use new``."""
    from services.config import ConfigDeprecationWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigDeprecationWarning):
            print(f"cai: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


QUEUE_FILE_HELP = (
    "file holding the queue URL (a mounted Secret), so a password stays off the command line; "
    "without --queue/--queue-file: $CAI_QUEUE_URL, then the file $CAI_QUEUE_URL_FILE names"
)


def _queue_url(args) -> str | None:
    """--queue, else the URL in --queue-file, else the environment (CAI_QUEUE_URL, CAI_QUEUE_URL_FILE);
    None when none is set (a --config file may name it)."""
    from services.config import ConfigError
    from services.queue import QueueError, queue_url_from_environment, read_queue_url_file

    if args.queue:
        return args.queue
    try:
        if getattr(args, "queue_file", None):
            return read_queue_url_file(args.queue_file)
        return queue_url_from_environment() or None
    except QueueError as exc:
        raise ConfigError(str(exc)) from None


def _fail(message: str) -> int:
    print(f"cai: error: {message}", file=sys.stderr)
    return 2


def _set(changes: dict) -> dict:
    """The flags that were given (argparse leaves the others None)."""
    return {k: v for k, v in changes.items() if v is not None}
