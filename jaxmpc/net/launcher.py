"""Runs the three parties as separate processes on loopback, with a fresh test PKI.

:func:`launch_local` (``jaxmpc launch``) creates a CA and three certificates in a work folder,
picks three free loopback ports, writes a ``parties.toml``, starts ``jaxmpc party`` once per
role, and waits. When every party succeeds it combines their result files into one report:
the client's predictions, and per link the payload bytes and messages counted by the sender
and by the receiver next to the simulator's report for the same model and batch shape
(:func:`jaxmpc.inference.secure_cost`). When a party fails, the others normally stop on their
own within their timeouts (they see the broken links); the launcher gives them a grace period,
kills any survivor, and raises :class:`LaunchError` with the first failure's message. Nothing
is written to ``output`` unless all three succeed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from jaxmpc.net.config import write_config
from jaxmpc.net.pki import ROLE_NAMES, create_test_pki
from jaxmpc.core.parties import LINKS, PARTIES

__all__ = ["launch_local", "LaunchError", "free_ports", "party_command", "error_line", "combine_results"]

_ORDER = ("cp", "server", "client")


class LaunchError(RuntimeError):
    """A party failed or the run timed out; the message has the first failure's error."""


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def party_command(role: str, config: str, *, python: str | None = None, weights=None, inputs=None, output=None,
                  eager: bool = False) -> list[str]:
    """The command line that runs one party."""
    cmd = [python or sys.executable, "-m", "jaxmpc", "party", "--role", role, "--config", os.fspath(config)]
    if weights is not None:
        cmd += ["--weights", os.fspath(weights)]
    if inputs is not None:
        cmd += ["--input", os.fspath(inputs)]
    if output is not None:
        cmd += ["--output", os.fspath(output)]
    if eager:
        cmd.append("--eager")
    return cmd


def error_line(log_text: str) -> str | None:
    """The ``jaxmpc party <role>: error: ...`` line of a party's log, if any."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("jaxmpc party") and ": error: " in line:
            return line
    return None


def _tail(path: str, n: int = 12) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _describe_exit(role: str, code: int, log_path: str) -> str:
    text = _tail(log_path, 200)
    line = error_line(text)
    if line:
        return line
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = str(-code)
        return f"{role} was killed by {sig}"
    last = text.strip().splitlines()[-1] if text.strip() else "no output"
    return f"{role} exited with status {code}: {last}"


def combine_results(results: dict, simulator=None) -> dict:
    """One report from the three parties' result files (and the simulator's report, per batch)."""
    client = results["client"]
    batches = client["batches"]
    links = {}
    for a, b in LINKS:
        n = f"{ROLE_NAMES[a]}->{ROLE_NAMES[b]}"
        sender, receiver = results[ROLE_NAMES[a]]["links"][n], results[ROLE_NAMES[b]]["links"][n]
        row = {
            "sent_payload_bytes": sender["payload_bytes"],
            "received_payload_bytes": receiver["payload_bytes"],
            "messages": sender["messages"],
            "frame_bytes": sender["frame_bytes"],
            "control_bytes": sender["control_bytes"],
            "protocol_payload_bytes": sender["expected_payload_bytes"],
        }
        if simulator is not None:
            row["simulator_payload_bytes"] = simulator.comm.link_bytes(a, b) * batches
        row["match"] = (row["sent_payload_bytes"] == row["received_payload_bytes"] == row["protocol_payload_bytes"]
                        and row.get("simulator_payload_bytes", row["sent_payload_bytes"]) == row["sent_payload_bytes"])
        links[n] = row
    timing = {r: results[r]["timing"] for r in results}
    out = {
        "images": client["images"],
        "batch_size": client["batch_size"],
        "batches": batches,
        "predictions": client["predictions"],
        "logits": client["logits"],
        "links": links,
        "wire_matches_simulator": all(r["match"] for r in links.values()),
        "payload_bytes": sum(r["sent_payload_bytes"] for r in links.values()),
        "framing_overhead_bytes": sum(r["frame_bytes"] - r["sent_payload_bytes"] + r["control_bytes"]
                                      for r in links.values()),
        "s_per_image": client["timing"]["s_per_image"],
        "timing": timing,
        "fingerprint": client["fingerprint"],
        "model": client["model"],
    }
    if simulator is not None:
        out["simulator"] = {"total_bytes_per_batch": simulator.total_bytes, "rounds": simulator.rounds,
                            "drelus_per_batch": simulator.drelus}
    return out


def _simulator_report(model: dict, protocol: dict | None):
    """The simulator's communication report for one batch (abstract trace, nothing runs)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from jaxmpc.core.config import ProtocolConfig
    from jaxmpc.inference import secure_cost
    from jaxmpc.net.config import ModelConfig
    from jaxmpc.net.party import _build, _public_sizes

    mc = ModelConfig(model["preset"], dict(model.get("kwargs", {})), tuple(model["input_shape"]),
                     int(model.get("batch_size", 1)), model.get("spec"), ProtocolConfig(**(protocol or {})))
    m, template = _build(mc)
    variables = _public_sizes(mc, template)
    return secure_cost(m, variables, mc.batch_shape, config=mc.protocol)


def launch_local(*, model: dict, weights, inputs, output=None, protocol: dict | None = None,
                 network: dict | None = None, workdir=None, timeout: float = 900.0, grace: float = 10.0,
                 eager: bool = False, env: dict | None = None, python: str | None = None, simulator: bool = True,
                 log=None) -> dict:
    """Starts client, server and CP as three processes on 127.0.0.1 and waits for them.

    Args:
      model: the public model: ``preset``, ``kwargs``, ``input_shape``, ``batch_size``, optional
        ``spec`` (a file path).
      weights: the server's weights (jaxmpc run folder or ``.npz``).
      inputs: the client's images (``.npy``, ``[N, H, W, C]``).
      output: where to write the combined report (JSON, atomically, only on success).
      protocol: ``ProtocolConfig`` fields.
      network: ``[network]`` options of ``parties.toml`` (timeouts, compression, simulated
        ``bandwidth_mbps``/``latency_ms``).
      workdir: folder for the PKI, ``parties.toml``, logs and per-party results (default: a
        temporary folder, removed afterwards).
      timeout: overall limit in seconds; then every party is killed.
      grace: seconds the survivors get to stop on their own after a party fails.
      eager: run the parties op by op instead of compiled.
      env: extra environment variables for the parties (e.g. ``JAX_DISABLE_MOST_OPTIMIZATIONS``).
      python: interpreter for the parties (default: this one).
      simulator: add the simulator's per-link bytes (:func:`jaxmpc.inference.secure_cost`).
      log: ``callable(str)`` for progress (default: silent).

    Returns:
      the combined report (see :func:`combine_results`), with ``workdir`` when kept.

    Raises:
      LaunchError: a party failed (its error message first) or the run timed out.
    """
    log = log or (lambda msg: None)
    tmp = os.fspath(workdir) if workdir is not None else tempfile.mkdtemp(prefix="jaxmpc-launch-")
    os.makedirs(tmp, exist_ok=True)
    procs: dict = {}
    try:
        pki = create_test_pki(os.path.join(tmp, "pki"))
        ports = free_ports(3)
        sections = {}
        for p, port in zip(PARTIES, ports):
            r = ROLE_NAMES[p]
            sections[f"parties.{r}"] = {"address": f"127.0.0.1:{port}", "cert": pki.cert(r), "key": pki.key(r)}
        sections["tls"] = {"ca": pki.ca}
        m = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.items() if v is not None}
        if "spec" in m:
            m["spec"] = os.path.abspath(m["spec"])
        sections["model"] = m
        if protocol:
            sections["protocol"] = dict(protocol)
        if network:
            sections["network"] = dict(network)
        cfg_path = write_config(os.path.join(tmp, "parties.toml"), sections)
        penv = dict(os.environ, **(env or {}))
        penv.setdefault("PYTHONUNBUFFERED", "1")
        started = time.monotonic()
        for r in _ORDER:
            cmd = party_command(r, cfg_path, python=python, weights=weights if r == "server" else None,
                                inputs=inputs if r == "client" else None, output=os.path.join(tmp, f"{r}.json"),
                                eager=eager)
            logf = open(os.path.join(tmp, f"{r}.log"), "w")
            procs[r] = (subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=penv,
                                         stdin=subprocess.DEVNULL), logf)
        log(f"started client, server and CP (logs in {tmp})")
        sim = _simulator_report(model, protocol) if simulator else None
        failure = None
        while True:
            codes = {r: pr.poll() for r, (pr, _) in procs.items()}
            bad = [r for r, c in codes.items() if c not in (None, 0)]
            if bad and failure is None:
                failure = (bad[0], time.monotonic())
            if all(c is not None for c in codes.values()):
                break
            now = time.monotonic()
            if failure is not None and now - failure[1] > grace:
                break
            if now - started > timeout:
                break
            time.sleep(0.1)
        codes = {r: pr.poll() for r, (pr, _) in procs.items()}
        survivors = [r for r, c in codes.items() if c is None]
        for r in survivors:
            procs[r][0].kill()
        for r, (pr, logf) in procs.items():
            pr.wait()
            logf.close()
        if failure is not None or survivors:
            lines = []
            if failure is not None:
                r0 = failure[0]
                lines.append(_describe_exit(r0, codes[r0], os.path.join(tmp, f"{r0}.log")))
            elif survivors:
                lines.append(f"the run did not finish within {timeout:g} s")
            for r in _ORDER:
                if failure is not None and r == failure[0]:
                    continue
                if r in survivors:
                    lines.append(f"{r} was still running and was killed")
                elif codes[r] != 0:
                    lines.append(_describe_exit(r, codes[r], os.path.join(tmp, f"{r}.log")))
            raise LaunchError("\n".join(lines))
        results = {}
        for r in _ORDER:
            with open(os.path.join(tmp, f"{r}.json")) as f:
                results[r] = json.load(f)
        report = combine_results(results, sim)
        if workdir is not None:
            report["workdir"] = tmp
        if output is not None:
            from jaxmpc._io import write_json

            write_json(output, report)
        return report
    finally:
        for r, (pr, logf) in procs.items():
            if pr.poll() is None:
                pr.kill()
                pr.wait()
            if not logf.closed:
                logf.close()
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)

