"""Three real parties over the network: TLS links, a party runtime, a local launcher.

The same protocol code as the simulator runs in each party's process (``jaxmpc.core.runtime`` in
party mode); this package moves its messages (see ``docs/networking.md``).

* :func:`run_party` -- one role (what ``jaxmpc party`` runs);
* :func:`launch_local` -- all three on loopback with a fresh test PKI (``jaxmpc launch``);
* :class:`Session` -- the TLS links of one party (framing, handshake, counters, faults);
* :func:`create_test_pki` -- a CA and one certificate per role;
* :func:`load_config` -- ``parties.toml``.
"""

from jaxmpc.net.config import ConfigError as ConfigError
from jaxmpc.net.config import NetConfig as NetConfig
from jaxmpc.net.config import load_config as load_config
from jaxmpc.net.launcher import LaunchError as LaunchError
from jaxmpc.net.launcher import launch_local as launch_local
from jaxmpc.net.party import PartyError as PartyError
from jaxmpc.net.party import run_party as run_party
from jaxmpc.net.party import save_variables_npz as save_variables_npz
from jaxmpc.net.pki import create_test_pki as create_test_pki
from jaxmpc.net.transport import NetError as NetError
from jaxmpc.net.transport import Session as Session
from jaxmpc.net.wire import WIRE_VERSION as WIRE_VERSION
