"""Command line: train, or finetune with a Block-ReLU spec, from a named config.

Examples::

    python -m jaxmpc.train --config digits --workdir runs/digits
    python -m jaxmpc.train --config fashion_mnist --workdir runs/fmnist --set num_epochs=5
    python -m jaxmpc.train --config fashion_mnist_finetune --workdir runs/fmnist_ft \\
        --init runs/fmnist --spec spec.json --distill

Rerunning a command with the same ``--workdir`` resumes from its last checkpoint. ``--set``
values are parsed as JSON when possible (``--set model_kwargs='{"num_filters": 16}'``), else
taken as strings. The final metrics are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from jaxmpc.train._checkpoint import load_variables
from jaxmpc.train._config import CONFIGS, get_config
from jaxmpc.train._loop import finetune, train_and_evaluate


def _parse_set(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxmpc.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS), help="named config")
    parser.add_argument("--workdir", required=True, help="run folder (checkpoints, config.json, history.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--init", help="start from the latest checkpoint of this run folder (finetuning)")
    parser.add_argument("--spec", help="Block-ReLU spec file to finetune with (needs --init)")
    parser.add_argument("--distill", action="store_true", help="distil from the --init model (CE + T^2 KL)")
    args = parser.parse_args(argv)
    config = get_config(args.config, **_parse_set(args.set))
    if args.spec and not args.init:
        parser.error("--spec needs --init (the trained model to finetune)")
    if args.distill and not args.init:
        parser.error("--distill needs --init (the teacher)")
    if args.init:
        variables, _ = load_variables(args.init)
        if args.spec:
            result = finetune(config, variables, args.spec, args.workdir, distill=args.distill)
        else:
            teacher = variables if args.distill else None
            if args.distill and config.distill_weight == 0:
                config = config.replace(distill_weight=1.0)
            result = train_and_evaluate(config, args.workdir, variables=variables, teacher=teacher)
    else:
        result = train_and_evaluate(config, args.workdir)
    print(json.dumps(result.final, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
