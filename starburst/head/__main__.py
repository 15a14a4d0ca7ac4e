import os

from .. import config
from .._auth import new_token
from .._files import write_atomic
from .._memory import return_large_blocks
from .launch import parse_args, spawn_local_node

return_large_blocks()
os.umask(0o077)  # everything the head and its nodes create is the owner's only
args = parse_args()
if args.provider == "local":
    store_dir = str(config.private_dir(config.shm_root() / f"starburst-{args.cluster_id}"))
    spill_dir = config.spill_root() / f"starburst-{args.cluster_id}-spill"
    if spill_dir.parent != config.shm_root():  # the store is in memory: beyond its cap, objects go to disk
        config.private_dir(spill_dir)
        write_atomic(os.path.join(store_dir, config.SPILL_FILE), [str(spill_dir).encode()])
    log_path = str(config.head_log())  # one log for the head and its node
    node_token = new_token()
    first_node = spawn_local_node("local-0", args.num_cpus, store_dir, log_path,  # starts while we import
                                  str(config.cluster_runtime_dir(args.cluster_id)), node_token)
    config.import_grpc_for_streams()  # before anything imports gRPC

    from .providers import LocalProvider, NodeProvider

    provider: NodeProvider = LocalProvider(args.num_cpus, store_dir, args.cluster_id, first_node, node_token)
else:
    config.import_grpc_for_streams()  # before anything imports gRPC
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
    if isinstance(provider, FargateProvider) and provider.options.local:
        # A hybrid cluster: this machine's node too, on the cluster's S3 store.
        from .providers import LocalProvider

        scratch = str(config.private_dir(config.shm_root() / f"starburst-{args.cluster_id}"))
        provider.attach_local(LocalProvider(args.num_cpus, scratch, args.cluster_id, None,
                                            new_token(), store_url=provider.store_url))

from .server import run  # noqa: E402

run(args, provider)
