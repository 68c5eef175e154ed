"""`bge-rerank doctor`: gather an environment snapshot, run pure checks over it."""

from .checks import CHECKS, CheckResult, run_checks
from .snapshot import Snapshot, collect

__all__ = ["CHECKS", "CheckResult", "Snapshot", "collect", "run_checks"]
