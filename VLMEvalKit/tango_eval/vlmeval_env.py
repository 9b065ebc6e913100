"""Importing VLMEvalKit (``ms-vlmeval``) safely and quietly.

VLMEvalKit reads its configuration from environment variables once, when it is imported, and has
side effects that a harness must undo (``../shared/docs/VLMEVALKIT_NOTES.md``):

* ``import vlmeval`` switches SSL certificate checks off for the whole process: they are put back
  right after the import;
* ModelScope is its default data source: ``VLMEVALKIT_USE_MODELSCOPE=0`` selects Hugging Face;
* ``huggingface_hub`` reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` at import: they are set first;
* the cache folder must be named ``hub`` (VLMEvalKit appends ``/hub`` otherwise): a data root of
  another name is reached through a link named ``hub``;
* it logs an ERROR about a missing ``.env`` on every import and prints install hints: that output
  goes to the log file, not the terminal;
* MVBench and MLVU call ``huggingface_hub.login(None)`` while they prepare their data, which
  prompts for a token (offline: fails): :func:`no_hub_login` makes it a no-op meanwhile.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import ssl
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

LOG = logging.getLogger("tango_eval")


def hub_cache_dir(data_root: str) -> Path:
    """The Hugging Face hub cache inside ``data_root``: ``data_root`` itself when it is named ``hub``
    or holds ``datasets--*`` folders, else ``data_root/hub``."""
    root = Path(data_root).expanduser().resolve()
    if root.name == "hub" or any(root.glob("datasets--*")):
        return root
    return root / "hub"


def default_hub_cache_dir() -> Path:
    """Where VLMEvalKit reads benchmarks when no data root is given (its own default)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return hub_cache_dir(os.environ[name])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def _named_hub(cache: Path) -> Path:
    """``cache`` itself when its name is ``hub``, else a link named ``hub`` pointing to it."""
    if cache.name == "hub":
        return cache
    link_dir = Path(tempfile.mkdtemp(prefix="tango_hub_"))
    (link_dir / "hub").symlink_to(cache, target_is_directory=True)
    return link_dir / "hub"


def configure_environment(data_root: Optional[str], offline: bool, lmu_data: Optional[str] = None) -> Path:
    """Set the variables VLMEvalKit and huggingface_hub read at import. Returns the hub cache used.

    Best run before ``huggingface_hub`` is imported; if it already was (transformers imports it),
    its cache and offline constants are updated too, which is what ``snapshot_download`` reads.
    """
    os.environ["VLMEVALKIT_USE_MODELSCOPE"] = "0"
    cache = hub_cache_dir(data_root) if data_root else default_hub_cache_dir()
    named = _named_hub(cache)
    os.environ["HF_HUB_CACHE"] = str(named)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:  # imported already (by transformers): it read them at import
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_CACHE = str(named)
        hub_constants.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE or offline
    if lmu_data:
        Path(lmu_data).mkdir(parents=True, exist_ok=True)
        os.environ["LMUData"] = str(lmu_data)
    return cache


@contextlib.contextmanager
def captured_output(log_name: str) -> Iterator[None]:
    """Send what the block prints (stdout, stderr) to the log at DEBUG level instead of the terminal."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield
    text = buffer.getvalue().strip()
    if text:
        LOG.debug("%s printed:\n%s", log_name, text)


class _DropEnvFileMessage(logging.Filter):
    """VLMEvalKit's ERROR about a missing ``.env`` file (we never use one) is not an error here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return ".env file" not in record.getMessage()


def import_vlmeval() -> ModuleType:
    """Import ``vlmeval`` with its datasets and model base class, SSL checks restored. Idempotent."""
    if "vlmeval.vlm.base" in sys.modules:
        _restore_certificate_checks()
        return sys.modules["vlmeval"]
    https_context = ssl._create_default_https_context
    root = logging.getLogger()
    if not root.handlers:  # keeps VLMEvalKit's basicConfig from installing a terminal handler
        root.addHandler(logging.NullHandler())
    env_filter = _DropEnvFileMessage()
    root.addFilter(env_filter)
    try:
        with captured_output("import vlmeval"):
            import vlmeval
            import vlmeval.dataset  # noqa: F401
            import vlmeval.vlm.base  # noqa: F401
    finally:
        ssl._create_default_https_context = https_context
        _restore_certificate_checks()
        root.removeFilter(env_filter)
    return vlmeval


def _restore_certificate_checks() -> None:
    """Undo ``import vlmeval``'s process-wide switch to unverified HTTPS, whoever imported it first."""
    if ssl._create_default_https_context is ssl._create_unverified_context:
        ssl._create_default_https_context = ssl.create_default_context


@contextlib.contextmanager
def no_hub_login() -> Iterator[None]:
    """Make ``huggingface_hub.login`` a no-op while VLMEvalKit's datasets prepare their data.

    MVBench and MLVU call ``login(None)`` before ``snapshot_download``; a token, if the user has one,
    is read by huggingface_hub from its usual places anyway.
    """
    import huggingface_hub

    original = huggingface_hub.login
    huggingface_hub.login = lambda *args, **kwargs: None
    try:
        yield
    finally:
        huggingface_hub.login = original


def skip_unused_frame_decoding(dataset) -> None:
    """Stop ``dataset.build_prompt(row, video_llm=True)`` from decoding frames it throws away.

    VLMEvalKit's LongVideoBench builds every prompt through ``save_video_frames``, which opens the
    video with decord and decodes the sampled frames (with ``fps`` set: every sampled frame of the
    whole video) even for a video model, whose prompt holds only the video's path; it saves them
    only for image models, so each call decodes them again. For ``video_llm=True`` the instance's
    ``save_video_frames`` here returns no frames instead (the prompt uses nothing else of it); image
    prompts (``video_llm=False``) and other datasets are left as they are. The message is
    VLMEvalKit's own either way (tested).
    """
    original = getattr(dataset, "save_video_frames", None)
    if original is None or type(dataset).__name__ != "LongVideoBench" or getattr(original, "_tango_skips", False):
        return

    def save_video_frames(video_path, video_llm=False):
        if video_llm:
            return [], [], {"fps": float("nan"), "n_frames": 0}
        return original(video_path, video_llm)

    save_video_frames._tango_skips = True
    dataset.save_video_frames = save_video_frames
