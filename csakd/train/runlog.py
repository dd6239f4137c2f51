"""What a run reports: a metrics log (JSONL and CSV, one row per evaluation, rewritten atomically), progress
bars with loss and throughput, one console line per validation, and optional TensorBoard scalars. Only the
main process writes, and nothing is written before the first row or scalar (so that a run refused while it
is being set up leaves no files)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tqdm.auto import tqdm

from .checkpoint import atomic_write_text


LEADING = ("epoch", "step", "time_s")


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


class RunLog:
    def __init__(self, run_dir: Path | None, enabled: bool = True, tensorboard: bool = False,
                 keep_rows: bool = True):
        """`keep_rows` False starts an empty log (a new run) instead of reading the rows already there."""
        self.run_dir = run_dir if enabled else None
        self.enabled = enabled
        self.rows: list[dict] = self._read_rows() if keep_rows else []
        self._writer, self._summary_writer = None, None
        if tensorboard and self.run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard: requested, but the 'tensorboard' package is not installed "
                                 "(pip install tensorboard)") from None
            self._summary_writer = SummaryWriter

    @property
    def writer(self):
        """The TensorBoard writer, made on first use (it creates its folder at once)."""
        if self._writer is None and self._summary_writer is not None:
            self._writer = self._summary_writer(str(self.run_dir / "tensorboard"))
        return self._writer

    @property
    def jsonl(self) -> Path | None:
        return self.run_dir / "metrics.jsonl" if self.run_dir is not None else None

    def _read_rows(self) -> list[dict]:
        if self.jsonl is None or not self.jsonl.is_file():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after `step` (work redone after a resume is logged again)."""
        self.rows = [r for r in self.rows if r["step"] <= step]
        self._write()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self._write()
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def _write(self) -> None:
        if self.run_dir is None:
            return
        atomic_write_text(self.jsonl, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows))
        keys = {k for r in self.rows for k in r}
        columns = [k for k in LEADING if k in keys] + sorted(keys - set(LEADING))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())

    def progress(self, total: int, initial: int, desc: str, enabled: bool = True):
        if not (self.enabled and enabled):
            return _NoBar()
        return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False, dynamic_ncols=True)

    def step(self, bar, step: int, losses: dict, samples_per_s: float) -> None:
        bar.update(1)
        bar.set_postfix({**{k: f"{v:.4f}" for k, v in losses.items()}, "img/s": f"{samples_per_s:.1f}"},
                        refresh=False)
        if self.writer is not None:
            for name, value in losses.items():
                self.writer.add_scalar(f"loss/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def validation_line(row: dict, networks) -> str | None:
    """One console line of a metrics row's validation figures (None when it has none)."""
    parts = []
    for name in networks:
        if f"val_{name}_psnr" in row:
            parts.append(f"{name} PSNR {row[f'val_{name}_psnr']:.2f} dB, SAM {row[f'val_{name}_sam']:.2f} deg, "
                         f"RMSE {row[f'val_{name}_rmse']:.4g}")
    if not parts:
        return None
    return f"validation at epoch {row['epoch']}, step {row['step']}: " + " | ".join(parts)
