"""Offline end-to-end rehearsal of the Fargate backend, test side.

moto stands in for the AWS control plane (ECS, EC2, IAM, STS); ``agent.FakeEcsAgent`` plays the
part of the ECS agent, running the real node entry point as a local process for every task the head
launches in moto, on its own loopback address; ``latency_proxy.LatencyProxy`` puts a network round
trip between the head and a node.
"""
