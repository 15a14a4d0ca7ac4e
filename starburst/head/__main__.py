import os

from .. import config
from .launch import parse_args, spawn_local_node

args = parse_args()
store_dir = str(config.shm_root() / f"starburst-{args.cluster_id}")
os.makedirs(store_dir, exist_ok=True)
log_path = str(config.log_dir() / f"node-{args.cluster_id}.log")
first_node = spawn_local_node("local-0", args.num_cpus, store_dir, log_path)  # starts while we import

from .server import run  # noqa: E402

run(args, store_dir, first_node)
