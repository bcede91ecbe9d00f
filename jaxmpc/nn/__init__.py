"""Flax models with Block ReLU, and block-size specs (Gorski & Avidan, arXiv 2304.10442).

Public API:

* :func:`block_relu` and :class:`BlockReLU` -- the plaintext Block ReLU (paper §3);
* the models of the paper and their presets (:mod:`jaxmpc.nn.models`);
* block-size specs: file format and helpers (:mod:`jaxmpc.nn.spec`).
"""

from jaxmpc.nn.block_relu import BLOCK_RELU_JIT_NAME as BLOCK_RELU_JIT_NAME
from jaxmpc.nn.block_relu import BLOCK_SIZES_COLLECTION as BLOCK_SIZES_COLLECTION
from jaxmpc.nn.block_relu import BlockReLU as BlockReLU
from jaxmpc.nn.block_relu import block_relu as block_relu
from jaxmpc.nn.models import ASPPHead as ASPPHead
from jaxmpc.nn.models import BasicBlock as BasicBlock
from jaxmpc.nn.models import Bottleneck as Bottleneck
from jaxmpc.nn.models import ConvBNReLU as ConvBNReLU
from jaxmpc.nn.models import DeepLabV3 as DeepLabV3
from jaxmpc.nn.models import DeepLabV3MobileNetV2 as DeepLabV3MobileNetV2
from jaxmpc.nn.models import DeepLabV3ResNet50 as DeepLabV3ResNet50
from jaxmpc.nn.models import InvertedResidual as InvertedResidual
from jaxmpc.nn.models import MobileNetV2 as MobileNetV2
from jaxmpc.nn.models import MobileNetV2D8 as MobileNetV2D8
from jaxmpc.nn.models import ResNet as ResNet
from jaxmpc.nn.models import ResNet18 as ResNet18
from jaxmpc.nn.models import ResNet50 as ResNet50
from jaxmpc.nn.models import ResNet50V1cD8 as ResNet50V1cD8
from jaxmpc.nn.models import ResNetSmall as ResNetSmall
from jaxmpc.nn.models import ResNetSmall16 as ResNetSmall16
from jaxmpc.nn.models import make_divisible as make_divisible
from jaxmpc.nn.spec import SPEC_FORMAT as SPEC_FORMAT
from jaxmpc.nn.spec import SPEC_VERSION as SPEC_VERSION
from jaxmpc.nn.spec import DReluCount as DReluCount
from jaxmpc.nn.spec import SpecError as SpecError
from jaxmpc.nn.spec import apply_spec as apply_spec
from jaxmpc.nn.spec import candidate_table as candidate_table
from jaxmpc.nn.spec import check_spec as check_spec
from jaxmpc.nn.spec import count_drelus as count_drelus
from jaxmpc.nn.spec import load_spec as load_spec
from jaxmpc.nn.spec import relu_layers as relu_layers
from jaxmpc.nn.spec import save_spec as save_spec
from jaxmpc.nn.spec import spec_from_variables as spec_from_variables
