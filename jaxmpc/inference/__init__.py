"""Secure inference of whole networks: jaxpr interpretation, fixed-point reference, reports."""

from jaxmpc.inference.api import fixed_point_apply as fixed_point_apply
from jaxmpc.inference.api import secure_apply as secure_apply
from jaxmpc.inference.api import secure_cost as secure_cost
from jaxmpc.inference.api import trace_model as trace_model
from jaxmpc.inference.interpreter import UnsupportedOperation as UnsupportedOperation
from jaxmpc.inference.report import LayerRow as LayerRow
from jaxmpc.inference.report import SecureReport as SecureReport
