"""Calls every RPC of autoscaler.v1 with a client that grpcio (Python) generates from the .proto
files, to show the protocol is plain proto3 that any gRPC implementation can speak, over the
group's mutual TLS: it talks to the agent with the monitor's certificate and to the monitor with
an agent's, and checks that the agent refuses its control calls from an agent's certificate.

Usage: check.py PROTO_DIR MONITOR_ADDR AGENT_ADDR TOKEN TLS_DIR
(TLS_DIR holds ca.pem and monitor.pem/.key, agent.pem/.key, as `GroupCa::write_dir` leaves them)
Prints one JSON object with what each call returned; exits non-zero on the first surprise.
"""

import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate(proto_dir, out_dir):
    files = ["autoscaler/v1/agent.proto", "autoscaler/v1/monitor.proto"]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    status = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + files
    )
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    sys.path.insert(0, out_dir)


def secure_channel(address, tls_dir, me, peer):
    def read(name):
        with open(os.path.join(tls_dir, name), "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"), private_key=read(f"{me}.key"), certificate_chain=read(f"{me}.pem")
    )
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", f"{peer}.autoscaler")])


def main():
    proto_dir, monitor_addr, agent_addr, token, tls_dir = sys.argv[1:6]
    with tempfile.TemporaryDirectory() as out_dir:
        generate(proto_dir, out_dir)
        from autoscaler.v1 import agent_pb2, agent_pb2_grpc, monitor_pb2, monitor_pb2_grpc

        auth = [("authorization", f"Bearer {token}")]
        results = {}
        with secure_channel(agent_addr, tls_dir, "agent", "agent") as channel:
            agent = agent_pb2_grpc.AgentStub(channel)
            try:
                agent.SetLoadTarget(agent_pb2.SetLoadTargetRequest(target_percent=50), metadata=auth, timeout=5)
                sys.exit("SetLoadTarget from an agent's certificate was accepted")
            except grpc.RpcError as error:
                results["SetLoadTarget(as agent)"] = error.code().name
        with grpc.insecure_channel(agent_addr) as channel:
            agent = agent_pb2_grpc.AgentStub(channel)
            try:
                agent.Ping(agent_pb2.PingRequest(sequence=1), metadata=auth, timeout=5)
                sys.exit("a plaintext Ping was answered")
            except grpc.RpcError as error:
                results["Ping(plaintext)"] = error.code().name
        with secure_channel(agent_addr, tls_dir, "monitor", "agent") as channel:
            agent = agent_pb2_grpc.AgentStub(channel)
            ping = agent.Ping(agent_pb2.PingRequest(sequence=9), metadata=auth, timeout=5)
            results["Ping"] = {
                "instance_id": ping.instance_id,
                "sequence": ping.sequence,
                "uptime_ms": ping.uptime_ms,
                "load_percent": ping.metrics.load_percent if ping.HasField("metrics") else None,
            }
            metrics = agent.GetMetrics(agent_pb2.GetMetricsRequest(), metadata=auth, timeout=5)
            results["GetMetrics"] = {
                "instance_id": metrics.instance_id,
                "load_percent": metrics.metrics.load_percent,
                "sampled_at_unix_ms": metrics.metrics.sampled_at_unix_ms,
            }
            agent.AttachMonitor(
                agent_pb2.AttachMonitorRequest(monitor_id="python-monitor", poll_interval_ms=1000), metadata=auth, timeout=5
            )
            results["AttachMonitor"] = "ok"
            agent.DetachMonitor(agent_pb2.DetachMonitorRequest(monitor_id="python-monitor"), metadata=auth, timeout=5)
            results["DetachMonitor"] = "ok"
            target = agent.SetLoadTarget(agent_pb2.SetLoadTargetRequest(target_percent=70, hold=True), metadata=auth, timeout=5)
            results["SetLoadTarget"] = {"current_load_percent": target.current_load_percent}
            try:
                agent.SetLoadTarget(agent_pb2.SetLoadTargetRequest(target_percent=170), metadata=auth, timeout=5)
                sys.exit("SetLoadTarget(170) was accepted")
            except grpc.RpcError as error:
                results["SetLoadTarget(170)"] = error.code().name
            agent.NotifyRemoval(agent_pb2.NotifyRemovalRequest(reason="interop test"), metadata=auth, timeout=5)
            results["NotifyRemoval"] = "ok"
            try:
                agent.Ping(agent_pb2.PingRequest(sequence=1), timeout=5)
                sys.exit("Ping without a token was accepted")
            except grpc.RpcError as error:
                results["Ping(no token)"] = error.code().name

        with secure_channel(monitor_addr, tls_dir, "agent", "monitor") as channel:
            monitor = monitor_pb2_grpc.MonitorStub(channel)
            registered = monitor.Register(
                monitor_pb2.RegisterRequest(instance_id="python-1", address="127.0.0.1:9", agent_version="py"),
                metadata=auth,
                timeout=5,
            )
            results["Register"] = {"monitor_id": registered.monitor_id, "poll_interval_ms": registered.poll_interval_ms}
            monitor.Deregister(monitor_pb2.DeregisterRequest(instance_id="python-1"), metadata=auth, timeout=5)
            results["Deregister"] = "ok"
            try:
                monitor.Deregister(monitor_pb2.DeregisterRequest(instance_id="python-1"), metadata=auth, timeout=5)
                sys.exit("a second Deregister was accepted")
            except grpc.RpcError as error:
                results["Deregister(again)"] = error.code().name
            try:
                monitor.Register(monitor_pb2.RegisterRequest(instance_id="", address="x"), metadata=auth, timeout=5)
                sys.exit("an empty registration was accepted")
            except grpc.RpcError as error:
                results["Register(empty)"] = error.code().name
        print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
