"""``parties.toml``: where the three parties listen, their certificates, the model and the network.

Example (all paths relative to the file)::

    [parties.client]
    address = "10.0.0.1:25870"      # where the others connect to this party (host:port)
    [parties.server]
    address = "10.0.0.2:25870"
    listen = "0.0.0.0:25870"        # optional: bind address, when it differs (NAT, containers)
    [parties.cp]
    address = "10.0.0.3:25870"

    [tls]
    ca = "pki/ca.pem"               # the CA every party's certificate is checked against
    cert = "pki/client.pem"         # this machine's certificate and key; or per party, as
    key = "pki/client.key"          # [parties.<role>] cert/key, or --cert/--key on the command line

    [model]                         # public: every party must agree (checked at the handshake)
    preset = "ResNetSmall"          # a jaxmpc.nn preset ...
    kwargs = { num_filters = 4 }    # ... and its arguments
    # config = "runs/x/train/config.json"   # or a run's config.json (its model and model_kwargs)
    input_shape = [8, 8, 1]         # one image, H, W, C
    batch_size = 4                  # images per secure forward pass
    spec = "spec.json"              # optional Block-ReLU spec (default: all ReLUs)

    [protocol]                      # optional jaxmpc.ProtocolConfig fields
    frac_bits = 12

    [network]                       # optional
    connect_timeout = 60.0          # seconds to connect and handshake with both peers
    timeout = 120.0                 # seconds to wait for any one message
    compile_timeout = 900.0         # seconds to wait for the peers to compile their programs
    compression = false             # zlib on payloads (shares are random: it does not pay)
    bandwidth_mbps = 0.0            # simulated link bandwidth per direction (0: unlimited)
    latency_ms = 0.0                # simulated one-way latency added to every message

Every field is validated when the file is read; mistakes raise :class:`ConfigError` naming the
file, the section and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib

from jaxmpc._io import JSONFileError, atomic_write_text, read_json
from jaxmpc.core.config import ProtocolConfig
from jaxmpc.core.parties import PARTIES, Party
from jaxmpc.net.pki import ROLE_NAMES

__all__ = ["ConfigError", "NetConfig", "ModelConfig", "NetworkOptions", "PartyEntry", "load_config", "parse_config",
           "write_config", "parse_address"]


class ConfigError(ValueError):
    """``parties.toml`` (or a value meant for it) is missing, malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class PartyEntry:
    """One party's network identity: where it is reached, where it binds, its certificate (optional)."""

    role: Party
    host: str
    port: int
    listen_host: str
    listen_port: int
    cert: str | None = None
    key: str | None = None


@dataclasses.dataclass(frozen=True)
class NetworkOptions:
    """Timeouts, compression and the optional simulated link (see the module docstring)."""

    connect_timeout: float = 60.0
    timeout: float = 120.0
    compile_timeout: float = 900.0
    compression: bool = False
    bandwidth_mbps: float = 0.0
    latency_ms: float = 0.0

    @property
    def bandwidth(self) -> float:
        """Bytes per second (0: unlimited)."""
        return self.bandwidth_mbps * 1e6 / 8

    @property
    def latency(self) -> float:
        """Seconds."""
        return self.latency_ms / 1e3


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The public description of the model every party runs (architecture, spec, protocol, shape)."""

    preset: str
    kwargs: dict
    input_shape: tuple
    batch_size: int
    spec: str | None
    protocol: ProtocolConfig

    @property
    def batch_shape(self) -> tuple:
        return (self.batch_size,) + tuple(self.input_shape)


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """A parsed ``parties.toml``."""

    parties: dict  # Party -> PartyEntry
    ca: str
    cert: str | None
    key: str | None
    model: ModelConfig
    network: NetworkOptions
    path: str | None = None

    def credentials(self, role, cert: str | None = None, key: str | None = None) -> tuple[str, str, str]:
        """``(ca, cert, key)`` of ``role``: command-line values, else ``[parties.<role>]``, else ``[tls]``.

        Raises:
          ConfigError: if the certificate or key is not configured or a file does not exist.
        """
        role = Party.parse(role)
        entry = self.parties[role]
        cert = cert or entry.cert or self.cert
        key = key or entry.key or self.key
        where = self.path or "parties.toml"
        if not cert or not key:
            raise ConfigError(f"{where}: no certificate/key for {ROLE_NAMES[role]}: set [tls] cert and key, "
                              f"[parties.{ROLE_NAMES[role]}] cert and key, or pass --cert/--key")
        for what, p in (("CA certificate", self.ca), ("certificate", cert), ("private key", key)):
            if not os.path.isfile(p):
                raise ConfigError(f"{where}: {what} {p} does not exist")
        return self.ca, cert, key


def parse_address(text, where: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` -> ``(host, port)``."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"{where} must be \"host:port\", got {text!r}")
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigError(f"{where}: empty host in {text!r}")
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"{where}: port must be a number, got {port!r}") from None
    if not 0 < port_n < 65536:
        raise ConfigError(f"{where}: port must lie in 1..65535, got {port_n}")
    return host, port_n


def _tuples(v):
    if isinstance(v, list):
        return tuple(_tuples(a) for a in v)
    if isinstance(v, dict):
        return {k: _tuples(a) for k, a in v.items()}
    return v


def _check_keys(table: dict, allowed, where: str):
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}")


def _number(table, name, where, default, *, positive=False, nonneg=False):
    v = table.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where} {name} must be a number, got {v!r}")
    if positive and not v > 0:
        raise ConfigError(f"{where} {name} must be positive, got {v}")
    if nonneg and v < 0:
        raise ConfigError(f"{where} {name} must not be negative, got {v}")
    return float(v)


def _path(base: str, p, where: str) -> str:
    if not isinstance(p, str) or not p:
        raise ConfigError(f"{where} must be a file path, got {p!r}")
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))


def parse_config(data: dict, *, base_dir: str = ".", path: str | None = None) -> NetConfig:
    """Validates the contents of a ``parties.toml`` (already parsed TOML, as a dict).

    Raises:
      ConfigError: naming the field at fault.
    """
    where = path or "parties.toml"
    _check_keys(data, ("parties", "tls", "model", "protocol", "network"), where)
    # -- parties --
    parties_t = data.get("parties")
    if not isinstance(parties_t, dict):
        raise ConfigError(f"{where}: missing [parties.client], [parties.server] and [parties.cp] sections")
    names = {v: k for k, v in ROLE_NAMES.items()}
    _check_keys(parties_t, names, f"{where} [parties]")
    parties = {}
    for p in PARTIES:
        name = ROLE_NAMES[p]
        sec = parties_t.get(name)
        w = f"{where} [parties.{name}]"
        if not isinstance(sec, dict):
            raise ConfigError(f"{where}: missing section [parties.{name}]")
        _check_keys(sec, ("address", "listen", "cert", "key"), w)
        if "address" not in sec:
            raise ConfigError(f"{w}: missing address = \"host:port\"")
        host, port = parse_address(sec["address"], f"{w} address")
        lhost, lport = parse_address(sec["listen"], f"{w} listen") if "listen" in sec else (host, port)
        cert = _path(base_dir, sec["cert"], f"{w} cert") if "cert" in sec else None
        key = _path(base_dir, sec["key"], f"{w} key") if "key" in sec else None
        parties[p] = PartyEntry(p, host, port, lhost, lport, cert, key)
    seen = {}
    for p, e in parties.items():
        k = (e.host, e.port)
        if k in seen:
            raise ConfigError(f"{where}: {ROLE_NAMES[p]} and {ROLE_NAMES[seen[k]]} have the same address "
                              f"{e.host}:{e.port}")
        seen[k] = p
    # -- tls --
    tls = data.get("tls")
    if not isinstance(tls, dict) or "ca" not in tls:
        raise ConfigError(f"{where}: missing [tls] ca = \"path/to/ca.pem\"")
    _check_keys(tls, ("ca", "cert", "key"), f"{where} [tls]")
    ca = _path(base_dir, tls["ca"], f"{where} [tls] ca")
    cert = _path(base_dir, tls["cert"], f"{where} [tls] cert") if "cert" in tls else None
    key = _path(base_dir, tls["key"], f"{where} [tls] key") if "key" in tls else None
    # -- model --
    model_t = data.get("model")
    if not isinstance(model_t, dict):
        raise ConfigError(f"{where}: missing [model] section (preset, input_shape, batch_size)")
    w = f"{where} [model]"
    _check_keys(model_t, ("preset", "kwargs", "config", "input_shape", "batch_size", "spec"), w)
    preset, kwargs = None, {}
    if "config" in model_t:
        cfg_path = _path(base_dir, model_t["config"], f"{w} config")
        try:
            run_cfg = read_json(cfg_path, "run config")
        except (OSError, JSONFileError) as e:
            raise ConfigError(f"{w} config: {e}") from None
        preset = run_cfg.get("model")
        kwargs = dict(run_cfg.get("model_kwargs") or {})
    if "preset" in model_t:
        preset = model_t["preset"]
    if "kwargs" in model_t:
        if not isinstance(model_t["kwargs"], dict):
            raise ConfigError(f"{w} kwargs must be a table, e.g. {{ num_filters = 4 }}")
        kwargs.update(model_t["kwargs"])
    if not isinstance(preset, str) or not preset:
        raise ConfigError(f"{w}: set preset = \"<jaxmpc.nn preset>\" (or config = a run's config.json)")
    shape = model_t.get("input_shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ConfigError(f"{w} input_shape must be a list of positive ints (H, W, C), got {shape!r}")
    batch = model_t.get("batch_size", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"{w} batch_size must be a positive int, got {batch!r}")
    spec = _path(base_dir, model_t["spec"], f"{w} spec") if model_t.get("spec") else None
    prot = data.get("protocol", {})
    if not isinstance(prot, dict):
        raise ConfigError(f"{where} [protocol] must be a table")
    fields = {f.name for f in dataclasses.fields(ProtocolConfig)}
    _check_keys(prot, fields, f"{where} [protocol]")
    try:
        protocol = ProtocolConfig(**prot)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where} [protocol]: {e}") from None
    model = ModelConfig(preset, _tuples(kwargs), tuple(shape), batch, spec, protocol)
    # -- network --
    net = data.get("network", {})
    if not isinstance(net, dict):
        raise ConfigError(f"{where} [network] must be a table")
    w = f"{where} [network]"
    _check_keys(net, [f.name for f in dataclasses.fields(NetworkOptions)], w)
    comp = net.get("compression", False)
    if not isinstance(comp, bool):
        raise ConfigError(f"{w} compression must be true or false, got {comp!r}")
    network = NetworkOptions(
        connect_timeout=_number(net, "connect_timeout", w, 60.0, positive=True),
        timeout=_number(net, "timeout", w, 120.0, positive=True),
        compile_timeout=_number(net, "compile_timeout", w, 900.0, positive=True),
        compression=comp,
        bandwidth_mbps=_number(net, "bandwidth_mbps", w, 0.0, nonneg=True),
        latency_ms=_number(net, "latency_ms", w, 0.0, nonneg=True),
    )
    return NetConfig(parties, ca, cert, key, model, network, path)


def load_config(path: str | os.PathLike) -> NetConfig:
    """Reads and validates a ``parties.toml``.

    Raises:
      ConfigError: the file is missing, is not TOML, or a field is wrong.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, base_dir=os.path.dirname(os.path.abspath(path)), path=path)


# ----------------------------------------------------------------------------------------------
# writing (the launcher writes one for its three local parties)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(a) for a in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(a)}" for k, a in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def write_config(path: str | os.PathLike, sections: dict) -> str:
    """Writes ``{"section" or "a.b": {key: value}}`` as TOML (atomically); returns the path."""
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
        lines.append("")
    return atomic_write_text(path, "\n".join(lines))
