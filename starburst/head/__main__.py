import os

from .. import config
from .launch import parse_args, spawn_local_node

args = parse_args()
if args.provider == "local":
    store_dir = str(config.shm_root() / f"starburst-{args.cluster_id}")
    os.makedirs(store_dir, exist_ok=True)
    log_path = str(config.log_dir() / "head.log")  # one log for the head and its node
    first_node = spawn_local_node("local-0", args.num_cpus, store_dir, log_path)  # starts while we import

    from .providers import LocalProvider

    provider = LocalProvider(args.num_cpus, store_dir, args.cluster_id, first_node)
else:
    from ..aws.provider import FargateProvider

    try:
        provider = FargateProvider.from_config_file(args.cluster_config)
    except Exception as exc:
        import logging
        import sys

        logging.basicConfig(level=logging.INFO)
        logging.getLogger("starburst.head").exception("the Fargate cluster could not be prepared")
        print(f"error: {exc}", flush=True)
        sys.exit(1)
    args.cluster_id = provider.cluster_id

from .server import run  # noqa: E402

run(args, provider)
