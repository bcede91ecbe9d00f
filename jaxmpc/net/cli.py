"""Subcommands of ``jaxmpc`` for networked runs (added by :func:`add_commands`).

    jaxmpc party  --role client|server|cp --config parties.toml [--weights W] [--input X.npy]
                  [--output result.json] [--cert C --key K] [--eager]
    jaxmpc launch --weights W --input X.npy [--output report.json] [--model P --model-kwargs JSON]
                  [--spec S] [--batch-size B] [--bandwidth-mbps M] [--latency-ms L] [--timeout T] [--keep DIR]
    jaxmpc pki    --out DIR [--days 30]

Exit status: 0 on success, 1 when the networked run failed (the last stderr line says why:
``jaxmpc party <role>: error: ...``), 2 for a bad command line, configuration, model or input
(nothing was sent). Every error is one line; ``--debug`` (or ``JAXMPC_DEBUG=1``) prints the
traceback of an unexpected one before that line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback


def add_commands(sub) -> None:
    """Adds ``party``, ``launch`` and ``pki`` to the ``jaxmpc`` argument parser."""
    from jaxmpc.cli import _nonnegative_float, _positive_float, _positive_int

    p = sub.add_parser("party", help="run one party of a networked secure inference (see docs/networking.md)")
    p.add_argument("--role", required=True, choices=["client", "server", "cp"])
    p.add_argument("--config", required=True, help="parties.toml")
    p.add_argument("--weights", default=None, help="server: jaxmpc run folder or .npz of variables")
    p.add_argument("--input", default=None, help="client: .npy of images [N, H, W, C]")
    p.add_argument("--output", default=None, help="result JSON (client: predictions; all: wire counters)")
    p.add_argument("--cert", default=None, help="this party's certificate (overrides parties.toml)")
    p.add_argument("--key", default=None, help="this party's private key (overrides parties.toml)")
    p.add_argument("--eager", action="store_true", help="run op by op instead of one compiled program")
    p.set_defaults(handler=_party)

    p = sub.add_parser("launch", help="run client, server and CP as three local processes over TLS on loopback")
    p.add_argument("--weights", required=True, help="jaxmpc run folder or .npz of variables")
    p.add_argument("--input", required=True, help=".npy of images [N, H, W, C]")
    p.add_argument("--output", default=None, help="combined report JSON")
    p.add_argument("--model", default=None, help="jaxmpc.nn preset (default: the run folder's config.json)")
    p.add_argument("--model-kwargs", default=None, help='JSON, e.g. \'{"num_filters": 4}\'')
    p.add_argument("--spec", default=None, help="Block-ReLU spec file (default: the run folder's spec.json if any)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per secure forward pass (default: all)")
    p.add_argument("--bandwidth-mbps", type=_nonnegative_float, default=0.0,
                   help="simulated bandwidth per link direction (0: off)")
    p.add_argument("--latency-ms", type=_nonnegative_float, default=0.0, help="simulated one-way latency")
    p.add_argument("--compression", action="store_true", help="zlib-compress payloads")
    p.add_argument("--message-timeout", type=_positive_float, default=120.0,
                   help="seconds to wait for any one message")
    p.add_argument("--timeout", type=_positive_float, default=1800.0, help="overall limit in seconds")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the PKI, parties.toml and logs in DIR")
    p.add_argument("--eager", action="store_true", help="run the parties op by op")
    p.set_defaults(handler=_launch)

    p = sub.add_parser("pki", help="create a test CA and one certificate per party")
    p.add_argument("--out", required=True, help="folder for ca.pem, client.pem/.key, server.pem/.key, cp.pem/.key")
    p.add_argument("--days", type=_positive_int, default=30, help="validity of the certificates")
    p.set_defaults(handler=_pki)


def _fail(prefix: str, msg, code: int) -> int:
    text = " ".join(str(msg).split("\n"))
    print(f"{prefix}: error: {text}", file=sys.stderr, flush=True)
    return code


def _party(args) -> int:
    from jaxmpc.net.config import ConfigError, load_config
    from jaxmpc.net.party import PartyError, run_party
    from jaxmpc.net.transport import NetError

    prefix = f"jaxmpc party {args.role}"
    code = 0
    # a failed receive inside the compiled program is reported once, below, not as a traceback
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
    try:
        cfg = load_config(args.config)
        run_party(args.role, cfg, weights=args.weights, inputs=args.input, output=args.output, cert=args.cert,
                  key=args.key, jit=not args.eager)
    except (ConfigError, PartyError) as e:
        code = _fail(prefix, e, 2)
    except NetError as e:
        code = _fail(prefix, e, 1)
    except KeyboardInterrupt:
        code = _fail(prefix, "interrupted", 1)
    except Exception as e:  # noqa: BLE001 - any other failure: one clear line, nonzero status
        from jaxmpc.cli import DEBUG_HINT, debug_requested

        if debug_requested(args):
            traceback.print_exc()
        code = _fail(prefix, f"unexpected {type(e).__name__}: {e} ({DEBUG_HINT})", 1)
    if code:
        # do not wait for XLA or helper threads that may still sit in a callback: leave now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return 0


def _launch(args) -> int:
    from jaxmpc.net.launcher import LaunchError, launch_local

    prefix = "jaxmpc launch"
    try:
        import numpy as np

        x = np.load(args.input, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        return _fail(prefix, f"cannot read {args.input}: {e}", 2)
    model = {}
    run_cfg = os.path.join(args.weights, "config.json") if os.path.isdir(args.weights) else None
    if run_cfg and os.path.isfile(run_cfg):
        from jaxmpc._io import JSONFileError, read_json

        try:
            rc = read_json(run_cfg, "run config")
        except (OSError, JSONFileError) as e:
            return _fail(prefix, e, 2)
        if not isinstance(rc, dict):
            return _fail(prefix, f"{run_cfg} must hold a JSON object", 2)
        model["preset"], model["kwargs"] = rc.get("model"), dict(rc.get("model_kwargs") or {})
    if args.model:
        model["preset"] = args.model
    if args.model_kwargs:
        try:
            model.setdefault("kwargs", {}).update(json.loads(args.model_kwargs))
        except (json.JSONDecodeError, AttributeError) as e:
            return _fail(prefix, f"--model-kwargs must be a JSON object: {e}", 2)
    if not model.get("preset"):
        return _fail(prefix, "give --model (or --weights a run folder with config.json)", 2)
    spec = args.spec
    if spec is None and os.path.isdir(args.weights) and os.path.isfile(os.path.join(args.weights, "spec.json")):
        spec = os.path.join(args.weights, "spec.json")
    model.update(input_shape=list(x.shape[1:]), batch_size=args.batch_size or int(x.shape[0]), spec=spec)
    network = {"timeout": args.message_timeout, "compression": args.compression,
               "bandwidth_mbps": args.bandwidth_mbps, "latency_ms": args.latency_ms}
    try:
        rep = launch_local(model=model, weights=args.weights, inputs=args.input, output=args.output, network=network,
                           workdir=args.keep, timeout=args.timeout, eager=args.eager,
                           log=lambda m: print(f"[launch] {m}", file=sys.stderr, flush=True))
    except LaunchError as e:
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return 1
    print(f"predictions: {rep['predictions']}")
    print(f"{rep['s_per_image']:.4f} s/image (client, steady state; batch {rep['batch_size']})")
    print("link          sent B       received B   simulator B  match")
    for name, r in rep["links"].items():
        print(f"{name:12s}  {r['sent_payload_bytes']:>11,}  {r['received_payload_bytes']:>11,}  "
              f"{r.get('simulator_payload_bytes', r['protocol_payload_bytes']):>11,}  {r['match']}")
    print(f"framing overhead: {rep['framing_overhead_bytes']:,} B (headers and control frames; TLS not counted)")
    return 0 if rep["wire_matches_simulator"] else 1


def _pki(args) -> int:
    from jaxmpc.net.pki import create_test_pki

    files = create_test_pki(args.out, days=args.days)
    for k, v in files.items():
        print(f"{k}: {v if isinstance(v, str) else ', '.join(v)}")
    print(f"warning: {files['ca_key']} can sign certificates for any party: move it off this machine (or delete it) "
          "before the parties' files are distributed", file=sys.stderr)
    return 0
