"""Training throughput on one accelerator: images per second at 224 px, by backbone and precision.

    .venv/bin/python bench/gpu.py [--batch 64] [--warmup 10] [--steps 30] [--quick]

MobileNetV2, EfficientNetB0 and DenseNet201 (from scratch, built by `search.models` as a trial
builds them: preprocessing inside, avg pooling, Dense 512 head) train on one batch of random
pixels held on the device, so the input pipeline is out of the picture. Each runs in float32,
mixed_float16, and mixed_float16 compiled with XLA (`jit_compile=True`): `--warmup` steps
(tracing, XLA compilation: not timed) then `--steps` timed steps in one `model.fit`.
`--budget` seconds bound the whole run: combinations left when it is spent are reported as
skipped. The defaults fit in a few minutes on one H200; `--quick` (32 px, batch 4, 2 steps)
only proves the script works, on any CPU. Prints a table and writes runs/bench/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("MobileNetV2", "EfficientNetB0", "DenseNet201")
MODES = {"float32": ("float32", False), "mixed_float16": ("mixed_float16", False), "mixed_float16+xla": ("mixed_float16", True)}


class _Clock:
    """Wall time of the timed steps only, from the first batch's start to the last one's end."""

    def __init__(self) -> None:
        self.started = 0.0
        self.ended = 0.0

    def callback(self) -> Any:
        import keras

        clock = self

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
                if batch == 0:
                    clock.started = time.perf_counter()

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                clock.ended = time.perf_counter()

        return Timer()


def device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU (no GPU visible)"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{details.get('device_name', 'GPU')} (x{len(gpus)} visible, 1 used)"


def one(backbone: str, mode: str, size: int, batch: int, warmup: int, steps: int) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from search.models import build as models
    from search.hparams import TrialConfig

    policy, xla = MODES[mode]
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        config = TrialConfig(backbone=backbone, weights="none", image_size=size, batch_size=batch, learning_rate=1e-3)
        model = models.build_model(config, 10)
        models.compile_model(model, config)
        if xla:  # compile_model's optimizer and loss, with XLA on
            model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=True)
        x = tf.random.uniform((batch, size, size, 3), 0, 255, seed=0)
        y = tf.random.uniform((batch,), 0, 10, dtype=tf.int32, seed=1)
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        started = time.perf_counter()
        model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)
        warmup_s = time.perf_counter() - started
        clock = _Clock()
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[clock.callback()])
        seconds = clock.ended - clock.started
        return {"backbone": backbone, "mode": mode, "params": models.count_params(model),
                "images_per_s": round(batch * steps / seconds, 1), "step_ms": round(1000 * seconds / steps, 2),
                "warmup_s": round(warmup_s, 1)}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (tracing, XLA compilation)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--budget", type=float, default=420, help="seconds for the whole run (default 420)")
    p.add_argument("--quick", action="store_true",
                   help="prove it works on a CPU: 32 px, batch 4, 1+2 steps, every mode on the first backbone only")
    p.add_argument("--out", type=Path, default=Path("runs/bench/gpu.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.warmup, args.steps = 32, 4, 1, 2
    unknown = [m for m in args.modes.split(",") if m not in MODES]
    if unknown:
        p.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    combinations = [(b, m) for b in args.models.split(",") for m in args.modes.split(",")]
    if args.quick:  # every backbone and every mode once: XLA compiles for minutes on a CPU
        combinations = [(b, m) for b, m in combinations if m == "float32" or b == combinations[0][0]]
    for backbone, mode in combinations:
        if time.perf_counter() - started > args.budget:
            rows.append({"backbone": backbone, "mode": mode, "skipped": f"--budget {args.budget:.0f} s spent"})
            continue
        try:
            rows.append(one(backbone, mode, args.size, args.batch, args.warmup, args.steps))
        except Exception as e:  # noqa: BLE001 - one combination failing (e.g. out of memory) must not lose the rest
            rows.append({"backbone": backbone, "mode": mode, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        r = rows[-1]
        print(f"{backbone:<15} {mode:<18} " + (f"{r['images_per_s']:>9} img/s  {r['step_ms']:>8} ms/step  "
              f"(warm-up {r['warmup_s']} s)" if "images_per_s" in r else r.get("error", "")), flush=True)
    summary = {"device": device(), "tensorflow": tf.__version__, "image_size": args.size, "batch": args.batch,
               "warmup_steps": args.warmup, "timed_steps": args.steps, "quick": args.quick,
               "total_s": round(time.perf_counter() - started, 1), "rows": rows, "date": time.strftime("%Y-%m-%d")}
    print(f"\n{summary['device']}, {args.size} px, batch {args.batch}, {args.steps} timed steps")
    print(f"{'backbone':<15} {'float32':>10} {'mixed_fp16':>11} {'fp16+XLA':>10}   (training images/s)")
    for backbone in args.models.split(","):
        cells = []
        for mode in MODES:
            r = next((r for r in rows if r["backbone"] == backbone and r["mode"] == mode), {})
            cells.append(str(r.get("images_per_s", "skipped" if "skipped" in r else "error" if r else "-")))
        print(f"{backbone:<15} {cells[0]:>10} {cells[1]:>11} {cells[2]:>10}")
    print(f"total {summary['total_s']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"Wrote {args.out}")
    return 0 if all("images_per_s" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
