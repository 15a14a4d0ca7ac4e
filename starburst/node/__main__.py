from .. import config
from .._memory import return_large_blocks
from .launch import parse_args, prepare

return_large_blocks()

args = parse_args()
early = prepare(args)  # executors import while the node does

config.import_grpc_for_streams()
from .server import run  # noqa: E402

run(args, early)
