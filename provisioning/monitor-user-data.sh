#!/bin/sh
# User-data of the monitor host, which `cargo xtask up` starts from the custom AMI. `up` puts the
# monitor's config (provisioning/aws.toml with the group set) in place of the placeholder below.
# The AMI has both units; this host runs the monitor and controller instead of an agent.
set -eu
mkdir -p /etc/autoscaler
touch /etc/autoscaler/monitor-role
cat > /etc/autoscaler/autoscaler.toml <<'AUTOSCALER_CONFIG'
@CONFIG@AUTOSCALER_CONFIG
systemctl disable --now autoscaler-agent.service || true
systemctl enable --now autoscaler-monitor.service
