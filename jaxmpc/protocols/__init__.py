"""The secure protocols, one module per family.

* :mod:`jaxmpc.protocols.linear` -- local ops, truncation, Beaver and server-weight bilinear products.
* :mod:`jaxmpc.protocols.compare` -- PrivateCompare, ShareConvert, MSB, DReLU (SecureNN).
* :mod:`jaxmpc.protocols.nonlinear` -- bit products, ReLU, select, MaxPool, Block ReLU.
"""

from jaxmpc.protocols import compare as compare
from jaxmpc.protocols import linear as linear
from jaxmpc.protocols import nonlinear as nonlinear
