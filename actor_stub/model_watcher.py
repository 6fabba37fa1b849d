"""Noticing a new `latest.onnx` and loading it, without ever losing the model in use.

Two signals, because neither is enough alone: watchdog file events are immediate but do not
cross container bind mounts (the trainer may publish from another container), and polling
the file's (mtime, size, inode) works everywhere but only every `poll_interval` seconds.
The actor calls `maybe_reload()` only between games, so a game is played with one model.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from trainer.games import GameSpec
from trainer.model.contract import LATEST_MODEL_NAME
from trainer.onnx_policy import OnnxPolicy

log = logging.getLogger("actor_stub.model")


Signature = tuple[int, int, int]  # (mtime_ns, size, inode)


def file_signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ModelWatcher:
    def __init__(
        self,
        model_dir: str | Path,
        spec: GameSpec,
        threads: int = 1,
        poll_interval: float = 2.0,
        use_events: bool = True,
        int8: bool = False,
    ):
        self.model_dir = Path(model_dir)
        self.path = self.model_dir / LATEST_MODEL_NAME
        self.spec = spec
        self.threads = threads
        self.poll_interval = poll_interval
        self.int8 = int8
        self.policy: OnnxPolicy | None = None
        self._seen: Signature | None = None  # signature of the last file we tried to load
        self._event = threading.Event()
        self._next_poll = 0.0
        self._observer = None
        if use_events:
            self._start_observer()

    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # polling alone still works
            log.warning("watchdog is not installed; relying on mtime polling only")
            return
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                # os.replace shows up as a move whose destination is latest.onnx.
                for p in (getattr(event, "src_path", ""), getattr(event, "dest_path", "")):
                    if p and os.path.basename(os.fsdecode(p)) == LATEST_MODEL_NAME:
                        watcher._event.set()

        try:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            observer = Observer()
            observer.daemon = True
            observer.schedule(Handler(), str(self.model_dir), recursive=False)
            observer.start()
            self._observer = observer
        except Exception as e:  # e.g. inotify watch limit reached
            log.warning("cannot watch %s for file events (%s); relying on mtime polling", self.model_dir, e)

    def maybe_reload(self) -> bool:
        """Load `latest.onnx` if it changed since the last attempt; True if the model changed.

        A file that fails to load is remembered by its signature and not retried until it is
        replaced again; the previous model stays in use.
        """
        now = time.monotonic()
        if not self._event.is_set() and now < self._next_poll:
            return False
        self._event.clear()
        self._next_poll = now + self.poll_interval
        sig = file_signature(self.path)
        if sig is None or sig == self._seen:
            return False
        self._seen = sig
        try:
            policy = OnnxPolicy(
                self.path,
                threads=self.threads,
                expected_env_id=self.spec.env_id,
                spec=self.spec,
                int8=self.int8,
            )
        except Exception as e:
            kept = (
                f"keeping model step {self.step_label(self.policy)}"
                if self.policy
                else "playing without a model"
            )
            log.warning("failed to load %s (%s); %s", self.path, e, kept)
            return False
        if policy.int8_error is not None:
            log.warning("%s; searching with the float32 model", policy.int8_error)
        old = self.policy
        self.policy = policy
        log.info(
            "loaded %s%s: model step %s (was %s)",
            self.path.name,
            " (int8 copy)" if policy.int8 else "",
            self.step_label(policy),
            self.step_label(old),
        )
        return True

    @staticmethod
    def step_label(policy: OnnxPolicy | None) -> str:
        if policy is None:
            return "none"
        return str(policy.step) if policy.step is not None else "unknown"

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
