"""``parties.toml`` parsing and validation (``jaxmpc.net.config``)."""

import os

import pytest

from jaxmpc import ProtocolConfig
from jaxmpc.net.config import ConfigError, load_config, parse_config, write_config
from jaxmpc.core.parties import CLIENT, CP, SERVER


def base(**over):
    data = {
        "parties": {
            "client": {"address": "10.0.0.1:25870", "cert": "pki/client.pem", "key": "pki/client.key"},
            "server": {"address": "server.example:25871", "listen": "0.0.0.0:9000"},
            "cp": {"address": "[::1]:25872"},
        },
        "tls": {"ca": "pki/ca.pem", "cert": "pki/any.pem", "key": "pki/any.key"},
        "model": {"preset": "ResNetSmall", "kwargs": {"num_filters": 4, "stage_sizes": [1, 1]},
                  "input_shape": [8, 8, 1], "batch_size": 2},
        "protocol": {"frac_bits": 13},
        "network": {"timeout": 5, "latency_ms": 2.5},
    }
    for k, v in over.items():
        data[k] = v
    return data


def test_valid_file_is_parsed_with_paths_relative_to_it(tmp_path):
    path = tmp_path / "parties.toml"
    sections = {f"parties.{r}": v for r, v in base()["parties"].items()}
    sections.update({k: v for k, v in base().items() if k != "parties"})
    write_config(path, sections)
    cfg = load_config(path)
    assert (cfg.parties[CLIENT].host, cfg.parties[CLIENT].port) == ("10.0.0.1", 25870)
    assert (cfg.parties[SERVER].listen_host, cfg.parties[SERVER].listen_port) == ("0.0.0.0", 9000)
    assert (cfg.parties[CP].host, cfg.parties[CP].listen_host) == ("::1", "::1")  # listen defaults to address
    assert cfg.ca == os.path.join(str(tmp_path), "pki", "ca.pem")
    assert cfg.parties[CLIENT].cert == os.path.join(str(tmp_path), "pki", "client.pem")
    assert cfg.model.kwargs == {"num_filters": 4, "stage_sizes": (1, 1)}  # lists become tuples (hashable modules)
    assert cfg.model.batch_shape == (2, 8, 8, 1)
    assert cfg.model.protocol == ProtocolConfig(frac_bits=13)
    assert cfg.network.timeout == 5.0 and cfg.network.latency == pytest.approx(0.0025) and cfg.network.bandwidth == 0


def test_model_from_a_run_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model": "ResNetSmall16", "model_kwargs": {"num_classes": 10}}')
    cfg = parse_config(base(model={"config": "config.json", "kwargs": {"num_filters": 2}, "input_shape": [8, 8, 1]}),
                       base_dir=str(tmp_path))
    assert cfg.model.preset == "ResNetSmall16" and cfg.model.kwargs == {"num_classes": 10, "num_filters": 2}
    assert cfg.model.batch_size == 1


@pytest.mark.parametrize("change, message", [
    (lambda d: d["parties"].pop("cp"), r"missing section \[parties.cp\]"),
    (lambda d: d["parties"]["client"].update(address="10.0.0.1"), "must be \"host:port\""),
    (lambda d: d["parties"]["client"].update(address="h:99999"), "port must lie in 1..65535"),
    (lambda d: d["parties"]["client"].update(adress="h:1"), "unknown field.*adress"),
    (lambda d: d["parties"]["cp"].update(address="10.0.0.1:25870"), "same address"),
    (lambda d: d.pop("tls"), r"missing \[tls\] ca"),
    (lambda d: d["model"].update(batch_size=0), "batch_size must be a positive int"),
    (lambda d: d["model"].update(input_shape=[8, -8, 1]), "input_shape must be a list of positive ints"),
    (lambda d: d["model"].pop("preset"), "set preset"),
    (lambda d: d["protocol"].update(frac_bits=99), r"\[protocol\].*frac_bits must lie in"),
    (lambda d: d["protocol"].update(fracbits=12), r"unknown field.*fracbits"),
    (lambda d: d["network"].update(timeout=-1), "timeout must be positive"),
    (lambda d: d["network"].update(compression="yes"), "compression must be true or false"),
    (lambda d: d.update(extra={}), "unknown field.*extra"),
])
def test_mistakes_name_the_field(change, message):
    data = base()
    change(data)
    with pytest.raises(ConfigError, match=message):
        parse_config(data, base_dir="/x")


def test_credentials_precedence_and_missing_files(tmp_path):
    for name in ("ca.pem", "client.pem", "client.key", "any.pem", "any.key", "cli.pem", "cli.key"):
        (tmp_path / name).write_text("x")
    d = base()
    d["tls"] = {"ca": "ca.pem", "cert": "any.pem", "key": "any.key"}
    d["parties"]["client"].update(cert="client.pem", key="client.key")
    cfg = parse_config(d, base_dir=str(tmp_path))
    assert cfg.credentials("client")[1].endswith("client.pem")  # [parties.client] beats [tls]
    assert cfg.credentials("server")[1].endswith("any.pem")
    assert cfg.credentials("client", str(tmp_path / "cli.pem"), str(tmp_path / "cli.key"))[2].endswith("cli.key")
    d["tls"] = {"ca": "ca.pem"}
    cfg = parse_config(d, base_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="no certificate/key for server"):
        cfg.credentials("server")
    d["tls"] = {"ca": "missing.pem"}
    with pytest.raises(ConfigError, match="CA certificate .*missing.pem does not exist"):
        parse_config(d, base_dir=str(tmp_path)).credentials("client")


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[parties\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
