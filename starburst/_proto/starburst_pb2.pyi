from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Value(_message.Message):
    __slots__ = ("inline", "key", "size", "contained", "is_error")
    INLINE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTAINED_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    inline: bytes
    key: str
    size: int
    contained: _containers.RepeatedScalarFieldContainer[bytes]
    is_error: bool
    def __init__(self, inline: _Optional[bytes] = ..., key: _Optional[str] = ..., size: _Optional[int] = ..., contained: _Optional[_Iterable[bytes]] = ..., is_error: _Optional[bool] = ...) -> None: ...

class Object(_message.Message):
    __slots__ = ("id", "value")
    ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    value: Value
    def __init__(self, id: _Optional[bytes] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpus", "gpus", "memory", "custom")
    class CustomEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CPUS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    gpus: float
    memory: float
    custom: _containers.ScalarMap[str, float]
    def __init__(self, cpus: _Optional[float] = ..., gpus: _Optional[float] = ..., memory: _Optional[float] = ..., custom: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Function(_message.Message):
    __slots__ = ("id", "pickled", "name", "source_file")
    ID_FIELD_NUMBER: _ClassVar[int]
    PICKLED_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FILE_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    pickled: bytes
    name: str
    source_file: str
    def __init__(self, id: _Optional[bytes] = ..., pickled: _Optional[bytes] = ..., name: _Optional[str] = ..., source_file: _Optional[str] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "function_id", "name", "args", "deps", "return_ids", "resources", "max_retries", "retry_exceptions", "parent_task_id", "job_id", "env_vars", "attempt", "actor_id", "method", "actor", "namespace", "generator", "working_dir", "py_modules", "stream_skip", "direct")
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    DEPS_FIELD_NUMBER: _ClassVar[int]
    RETURN_IDS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_EXCEPTIONS_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    PY_MODULES_FIELD_NUMBER: _ClassVar[int]
    STREAM_SKIP_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    function_id: bytes
    name: str
    args: Value
    deps: _containers.RepeatedScalarFieldContainer[bytes]
    return_ids: _containers.RepeatedScalarFieldContainer[bytes]
    resources: Resources
    max_retries: int
    retry_exceptions: bytes
    parent_task_id: bytes
    job_id: str
    env_vars: _containers.ScalarMap[str, str]
    attempt: int
    actor_id: bytes
    method: str
    actor: ActorOptions
    namespace: str
    generator: str
    working_dir: str
    py_modules: _containers.RepeatedScalarFieldContainer[str]
    stream_skip: int
    direct: int
    def __init__(self, task_id: _Optional[bytes] = ..., function_id: _Optional[bytes] = ..., name: _Optional[str] = ..., args: _Optional[_Union[Value, _Mapping]] = ..., deps: _Optional[_Iterable[bytes]] = ..., return_ids: _Optional[_Iterable[bytes]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., max_retries: _Optional[int] = ..., retry_exceptions: _Optional[bytes] = ..., parent_task_id: _Optional[bytes] = ..., job_id: _Optional[str] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., attempt: _Optional[int] = ..., actor_id: _Optional[bytes] = ..., method: _Optional[str] = ..., actor: _Optional[_Union[ActorOptions, _Mapping]] = ..., namespace: _Optional[str] = ..., generator: _Optional[str] = ..., working_dir: _Optional[str] = ..., py_modules: _Optional[_Iterable[str]] = ..., stream_skip: _Optional[int] = ..., direct: _Optional[int] = ...) -> None: ...

class ActorOptions(_message.Message):
    __slots__ = ("class_name", "max_concurrency", "is_async", "max_restarts", "max_task_retries", "name", "detached", "handle_meta", "get_if_exists")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    IS_ASYNC_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TASK_RETRIES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    HANDLE_META_FIELD_NUMBER: _ClassVar[int]
    GET_IF_EXISTS_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    max_concurrency: int
    is_async: bool
    max_restarts: int
    max_task_retries: int
    name: str
    detached: bool
    handle_meta: bytes
    get_if_exists: bool
    def __init__(self, class_name: _Optional[str] = ..., max_concurrency: _Optional[int] = ..., is_async: _Optional[bool] = ..., max_restarts: _Optional[int] = ..., max_task_retries: _Optional[int] = ..., name: _Optional[str] = ..., detached: _Optional[bool] = ..., handle_meta: _Optional[bytes] = ..., get_if_exists: _Optional[bool] = ...) -> None: ...

class ActorRequest(_message.Message):
    __slots__ = ("request_id", "create_named", "get_named", "cluster_state", "outstanding")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_NAMED_FIELD_NUMBER: _ClassVar[int]
    GET_NAMED_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_STATE_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    create_named: TaskSpec
    get_named: str
    cluster_state: bool
    outstanding: bool
    def __init__(self, request_id: _Optional[int] = ..., create_named: _Optional[_Union[TaskSpec, _Mapping]] = ..., get_named: _Optional[str] = ..., cluster_state: _Optional[bool] = ..., outstanding: _Optional[bool] = ...) -> None: ...

class ActorReply(_message.Message):
    __slots__ = ("request_id", "error", "actor_id", "handle_meta", "created", "total", "available", "nodes", "outstanding")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_META_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    error: str
    actor_id: bytes
    handle_meta: bytes
    created: bool
    total: Resources
    available: Resources
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    outstanding: int
    def __init__(self, request_id: _Optional[int] = ..., error: _Optional[str] = ..., actor_id: _Optional[bytes] = ..., handle_meta: _Optional[bytes] = ..., created: _Optional[bool] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., available: _Optional[_Union[Resources, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., outstanding: _Optional[int] = ...) -> None: ...

class KillActor(_message.Message):
    __slots__ = ("actor_id", "no_restart", "reason")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    NO_RESTART_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    no_restart: bool
    reason: str
    def __init__(self, actor_id: _Optional[bytes] = ..., no_restart: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ActorDied(_message.Message):
    __slots__ = ("actor_id", "reason")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    reason: str
    def __init__(self, actor_id: _Optional[bytes] = ..., reason: _Optional[str] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("object_id", "force", "recursive", "task_id", "actor_id")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    force: bool
    recursive: bool
    task_id: bytes
    actor_id: bytes
    def __init__(self, object_id: _Optional[bytes] = ..., force: _Optional[bool] = ..., recursive: _Optional[bool] = ..., task_id: _Optional[bytes] = ..., actor_id: _Optional[bytes] = ...) -> None: ...

class Log(_message.Message):
    __slots__ = ("job_id", "task_name", "pid", "node", "stream", "text")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    task_name: str
    pid: int
    node: str
    stream: int
    text: str
    def __init__(self, job_id: _Optional[str] = ..., task_name: _Optional[str] = ..., pid: _Optional[int] = ..., node: _Optional[str] = ..., stream: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("kind", "job_id", "pid", "log_to_driver", "namespace", "version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LOG_TO_DRIVER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    job_id: str
    pid: int
    log_to_driver: bool
    namespace: str
    version: str
    def __init__(self, kind: _Optional[str] = ..., job_id: _Optional[str] = ..., pid: _Optional[int] = ..., log_to_driver: _Optional[bool] = ..., namespace: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ClientOp(_message.Message):
    __slots__ = ("hello", "function", "submit", "put", "subscribe", "release", "add_ref", "cancel", "request", "kill_actor", "release_function", "ping", "direct_done", "store_usage")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    ADD_REF_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    KILL_ACTOR_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    DIRECT_DONE_FIELD_NUMBER: _ClassVar[int]
    STORE_USAGE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    function: Function
    submit: TaskSpec
    put: Object
    subscribe: bytes
    release: bytes
    add_ref: bytes
    cancel: Cancel
    request: ActorRequest
    kill_actor: KillActor
    release_function: bytes
    ping: int
    direct_done: TaskDone
    store_usage: StoreUsage
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., function: _Optional[_Union[Function, _Mapping]] = ..., submit: _Optional[_Union[TaskSpec, _Mapping]] = ..., put: _Optional[_Union[Object, _Mapping]] = ..., subscribe: _Optional[bytes] = ..., release: _Optional[bytes] = ..., add_ref: _Optional[bytes] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., request: _Optional[_Union[ActorRequest, _Mapping]] = ..., kill_actor: _Optional[_Union[KillActor, _Mapping]] = ..., release_function: _Optional[bytes] = ..., ping: _Optional[int] = ..., direct_done: _Optional[_Union[TaskDone, _Mapping]] = ..., store_usage: _Optional[_Union[StoreUsage, _Mapping]] = ...) -> None: ...

class StoreUsage(_message.Message):
    __slots__ = ("put_requests", "get_requests", "delete_requests", "bytes_uploaded", "bytes_downloaded")
    PUT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    GET_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DELETE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWNLOADED_FIELD_NUMBER: _ClassVar[int]
    put_requests: int
    get_requests: int
    delete_requests: int
    bytes_uploaded: int
    bytes_downloaded: int
    def __init__(self, put_requests: _Optional[int] = ..., get_requests: _Optional[int] = ..., delete_requests: _Optional[int] = ..., bytes_uploaded: _Optional[int] = ..., bytes_downloaded: _Optional[int] = ...) -> None: ...

class ClientMsg(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[ClientOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[ClientOp, _Mapping]]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "job_id", "store_url", "inline_threshold", "total", "largest_node", "head_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_URL_FIELD_NUMBER: _ClassVar[int]
    INLINE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LARGEST_NODE_FIELD_NUMBER: _ClassVar[int]
    HEAD_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    job_id: str
    store_url: str
    inline_threshold: int
    total: Resources
    largest_node: Resources
    head_version: str
    def __init__(self, session_id: _Optional[str] = ..., job_id: _Optional[str] = ..., store_url: _Optional[str] = ..., inline_threshold: _Optional[int] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., largest_node: _Optional[_Union[Resources, _Mapping]] = ..., head_version: _Optional[str] = ...) -> None: ...

class HeadOp(_message.Message):
    __slots__ = ("welcome", "ready", "log", "error", "reply", "forget_function", "pong", "actor_direct")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    FORGET_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    ACTOR_DIRECT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    ready: Object
    log: Log
    error: str
    reply: ActorReply
    forget_function: bytes
    pong: int
    actor_direct: ActorDirect
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., ready: _Optional[_Union[Object, _Mapping]] = ..., log: _Optional[_Union[Log, _Mapping]] = ..., error: _Optional[str] = ..., reply: _Optional[_Union[ActorReply, _Mapping]] = ..., forget_function: _Optional[bytes] = ..., pong: _Optional[int] = ..., actor_direct: _Optional[_Union[ActorDirect, _Mapping]] = ...) -> None: ...

class ActorDirect(_message.Message):
    __slots__ = ("actor_id", "address", "token", "incarnation", "ordered")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ORDERED_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    address: str
    token: str
    incarnation: int
    ordered: bool
    def __init__(self, actor_id: _Optional[bytes] = ..., address: _Optional[str] = ..., token: _Optional[str] = ..., incarnation: _Optional[int] = ..., ordered: _Optional[bool] = ...) -> None: ...

class HeadMsg(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[HeadOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[HeadOp, _Mapping]]] = ...) -> None: ...

class Blocked(_message.Message):
    __slots__ = ("task_id", "blocked", "cpus")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    blocked: bool
    cpus: float
    def __init__(self, task_id: _Optional[bytes] = ..., blocked: _Optional[bool] = ..., cpus: _Optional[float] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("spec", "deps", "function")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DEPS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    spec: TaskSpec
    deps: _containers.RepeatedCompositeFieldContainer[Object]
    function: Function
    def __init__(self, spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., deps: _Optional[_Iterable[_Union[Object, _Mapping]]] = ..., function: _Optional[_Union[Function, _Mapping]] = ...) -> None: ...

class Relay(_message.Message):
    __slots__ = ("executor", "up", "down", "closed")
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    executor: int
    up: ClientMsg
    down: HeadMsg
    closed: bool
    def __init__(self, executor: _Optional[int] = ..., up: _Optional[_Union[ClientMsg, _Mapping]] = ..., down: _Optional[_Union[HeadMsg, _Mapping]] = ..., closed: _Optional[bool] = ...) -> None: ...

class HeadToNodeOp(_message.Message):
    __slots__ = ("run", "cancel", "relay", "shutdown", "kill_actor", "ping", "recall", "forget_function")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    KILL_ACTOR_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    FORGET_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    run: Run
    cancel: Cancel
    relay: Relay
    shutdown: bool
    kill_actor: bytes
    ping: int
    recall: Returned
    forget_function: bytes
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., relay: _Optional[_Union[Relay, _Mapping]] = ..., shutdown: _Optional[bool] = ..., kill_actor: _Optional[bytes] = ..., ping: _Optional[int] = ..., recall: _Optional[_Union[Returned, _Mapping]] = ..., forget_function: _Optional[bytes] = ...) -> None: ...

class HeadToNode(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[HeadToNodeOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[HeadToNodeOp, _Mapping]]] = ...) -> None: ...

class NodeHello(_message.Message):
    __slots__ = ("node_id", "resources", "store_url", "pid", "address", "versions")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    STORE_URL_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    resources: Resources
    store_url: str
    pid: int
    address: str
    versions: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., store_url: _Optional[str] = ..., pid: _Optional[int] = ..., address: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskDone(_message.Message):
    __slots__ = ("task_id", "results", "failure", "retryable", "detail", "attempt", "duration_s", "executor_pid", "direct_address", "direct_token", "via_node", "store_usage")
    class Failure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[TaskDone.Failure]
        WORKER_DIED: _ClassVar[TaskDone.Failure]
        CANCELLED: _ClassVar[TaskDone.Failure]
        NOT_STARTED: _ClassVar[TaskDone.Failure]
    NONE: TaskDone.Failure
    WORKER_DIED: TaskDone.Failure
    CANCELLED: TaskDone.Failure
    NOT_STARTED: TaskDone.Failure
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_PID_FIELD_NUMBER: _ClassVar[int]
    DIRECT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DIRECT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VIA_NODE_FIELD_NUMBER: _ClassVar[int]
    STORE_USAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    results: _containers.RepeatedCompositeFieldContainer[Object]
    failure: TaskDone.Failure
    retryable: bool
    detail: str
    attempt: int
    duration_s: float
    executor_pid: int
    direct_address: str
    direct_token: str
    via_node: bool
    store_usage: StoreUsage
    def __init__(self, task_id: _Optional[bytes] = ..., results: _Optional[_Iterable[_Union[Object, _Mapping]]] = ..., failure: _Optional[_Union[TaskDone.Failure, str]] = ..., retryable: _Optional[bool] = ..., detail: _Optional[str] = ..., attempt: _Optional[int] = ..., duration_s: _Optional[float] = ..., executor_pid: _Optional[int] = ..., direct_address: _Optional[str] = ..., direct_token: _Optional[str] = ..., via_node: _Optional[bool] = ..., store_usage: _Optional[_Union[StoreUsage, _Mapping]] = ...) -> None: ...

class NodeToHeadOp(_message.Message):
    __slots__ = ("hello", "done", "log", "relay", "blocked", "executors", "actor_died", "stream_item", "draining", "pong", "running")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_DIED_FIELD_NUMBER: _ClassVar[int]
    STREAM_ITEM_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    hello: NodeHello
    done: TaskDone
    log: Log
    relay: Relay
    blocked: Blocked
    executors: int
    actor_died: ActorDied
    stream_item: Object
    draining: bool
    pong: int
    running: int
    def __init__(self, hello: _Optional[_Union[NodeHello, _Mapping]] = ..., done: _Optional[_Union[TaskDone, _Mapping]] = ..., log: _Optional[_Union[Log, _Mapping]] = ..., relay: _Optional[_Union[Relay, _Mapping]] = ..., blocked: _Optional[_Union[Blocked, _Mapping]] = ..., executors: _Optional[int] = ..., actor_died: _Optional[_Union[ActorDied, _Mapping]] = ..., stream_item: _Optional[_Union[Object, _Mapping]] = ..., draining: _Optional[bool] = ..., pong: _Optional[int] = ..., running: _Optional[int] = ...) -> None: ...

class NodeToHead(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[NodeToHeadOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[NodeToHeadOp, _Mapping]]] = ...) -> None: ...

class ExecutorMsg(_message.Message):
    __slots__ = ("hello", "done", "log", "up", "blocked", "returned", "stream_item")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    STREAM_ITEM_FIELD_NUMBER: _ClassVar[int]
    hello: int
    done: TaskDone
    log: Log
    up: ClientMsg
    blocked: Blocked
    returned: Returned
    stream_item: Object
    def __init__(self, hello: _Optional[int] = ..., done: _Optional[_Union[TaskDone, _Mapping]] = ..., log: _Optional[_Union[Log, _Mapping]] = ..., up: _Optional[_Union[ClientMsg, _Mapping]] = ..., blocked: _Optional[_Union[Blocked, _Mapping]] = ..., returned: _Optional[_Union[Returned, _Mapping]] = ..., stream_item: _Optional[_Union[Object, _Mapping]] = ...) -> None: ...

class Returned(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, task_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class NodeToExecutorMsg(_message.Message):
    __slots__ = ("run", "down", "cancel", "recall", "forget_function")
    RUN_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    FORGET_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    run: Run
    down: HeadMsg
    cancel: bytes
    recall: Returned
    forget_function: bytes
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., down: _Optional[_Union[HeadMsg, _Mapping]] = ..., cancel: _Optional[bytes] = ..., recall: _Optional[_Union[Returned, _Mapping]] = ..., forget_function: _Optional[bytes] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "address", "resources", "cpus_in_use", "running", "pid", "executors", "queued")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    CPUS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    resources: Resources
    cpus_in_use: float
    running: int
    pid: int
    executors: int
    queued: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., cpus_in_use: _Optional[float] = ..., running: _Optional[int] = ..., pid: _Optional[int] = ..., executors: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("head_version", "pid", "uptime_s", "nodes", "sessions", "queued", "running", "tasks_finished", "objects", "object_bytes", "store_url", "cluster", "tasks_failed", "tasks_cancelled", "cluster_id")
    HEAD_VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    TASKS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_URL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    TASKS_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    head_version: str
    pid: int
    uptime_s: float
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    sessions: int
    queued: int
    running: int
    tasks_finished: int
    objects: int
    object_bytes: int
    store_url: str
    cluster: ClusterStatus
    tasks_failed: int
    tasks_cancelled: int
    cluster_id: str
    def __init__(self, head_version: _Optional[str] = ..., pid: _Optional[int] = ..., uptime_s: _Optional[float] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., sessions: _Optional[int] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., tasks_finished: _Optional[int] = ..., objects: _Optional[int] = ..., object_bytes: _Optional[int] = ..., store_url: _Optional[str] = ..., cluster: _Optional[_Union[ClusterStatus, _Mapping]] = ..., tasks_failed: _Optional[int] = ..., tasks_cancelled: _Optional[int] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("provider", "cluster_id", "nodes_pending", "workers_min", "workers_max", "node_size", "cost_usd", "cost_per_hour", "max_cost", "message", "region", "local_cpus", "burst", "burst_decision", "burst_nodes", "tasks_local", "tasks_cloud", "nodes_requested", "nodes_provisioning", "nodes_pulling")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_PENDING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_MIN_FIELD_NUMBER: _ClassVar[int]
    WORKERS_MAX_FIELD_NUMBER: _ClassVar[int]
    NODE_SIZE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    COST_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CPUS_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    BURST_DECISION_FIELD_NUMBER: _ClassVar[int]
    BURST_NODES_FIELD_NUMBER: _ClassVar[int]
    TASKS_LOCAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_CLOUD_FIELD_NUMBER: _ClassVar[int]
    NODES_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    NODES_PROVISIONING_FIELD_NUMBER: _ClassVar[int]
    NODES_PULLING_FIELD_NUMBER: _ClassVar[int]
    provider: str
    cluster_id: str
    nodes_pending: int
    workers_min: int
    workers_max: int
    node_size: str
    cost_usd: float
    cost_per_hour: float
    max_cost: float
    message: str
    region: str
    local_cpus: float
    burst: str
    burst_decision: str
    burst_nodes: int
    tasks_local: int
    tasks_cloud: int
    nodes_requested: int
    nodes_provisioning: int
    nodes_pulling: int
    def __init__(self, provider: _Optional[str] = ..., cluster_id: _Optional[str] = ..., nodes_pending: _Optional[int] = ..., workers_min: _Optional[int] = ..., workers_max: _Optional[int] = ..., node_size: _Optional[str] = ..., cost_usd: _Optional[float] = ..., cost_per_hour: _Optional[float] = ..., max_cost: _Optional[float] = ..., message: _Optional[str] = ..., region: _Optional[str] = ..., local_cpus: _Optional[float] = ..., burst: _Optional[str] = ..., burst_decision: _Optional[str] = ..., burst_nodes: _Optional[int] = ..., tasks_local: _Optional[int] = ..., tasks_cloud: _Optional[int] = ..., nodes_requested: _Optional[int] = ..., nodes_provisioning: _Optional[int] = ..., nodes_pulling: _Optional[int] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShutdownReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
