"""Print wsd-vs-diffusers SSIM for every scheduler: `python scripts/ssim_report.py MODEL TARGET STEPS`.

Uses the end-to-end test's setup (tests/numerics/test_generate.py), so the numbers are the
ones the test asserts on; docs/VERIFY.md records a run.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "numerics"))

from test_generate import PROMPT, SCHEDULERS, Settings, setup_for, ssim  # noqa: E402


def main(model: str, target: str, steps: int) -> None:
    setup = setup_for(model, target)
    for scheduler in SCHEDULERS:
        settings = Settings(PROMPT, "blurry", scheduler, steps=steps, seed=11)
        start = time.time()
        ours = setup.pipe.generate(**settings.as_dict())
        seconds = time.time() - start
        theirs = setup.reference.image(settings, setup.height, setup.width)
        print(f"{model} {target} {scheduler:13s} steps {steps} SSIM {ssim(ours, theirs):.5f} "
              f"wsd {seconds:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
