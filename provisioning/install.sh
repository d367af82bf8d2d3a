#!/bin/sh
# Installs the autoscaler's binaries and systemd units on an instance. `cargo xtask bootstrap`
# runs it through SSM Run Command with the download URLs of the binaries (presigned, from the
# account's own bucket) and the group's name:
#   install.sh GROUP AGENT_URL MONITOR_URL AGENT_UNIT_URL MONITOR_UNIT_URL APP_URL APP_UNIT_URL
# The application (autoscaler-app) is installed but not enabled: instances of a group with a load
# balancer enable it at boot (provisioning/agent-app-user-data.sh).
set -eu
group="$1"; agent_url="$2"; monitor_url="$3"; agent_unit_url="$4"; monitor_unit_url="$5"
app_url="$6"; app_unit_url="$7"

fetch() { curl --fail --silent --show-error --location --retry 5 --max-time 120 -o "$2" "$1"; }

install -d -m 0755 /etc/autoscaler
fetch "$agent_url" /usr/local/bin/autoscaler-agent
fetch "$monitor_url" /usr/local/bin/autoscaler-monitor
fetch "$app_url" /usr/local/bin/autoscaler-app
chmod 0755 /usr/local/bin/autoscaler-agent /usr/local/bin/autoscaler-monitor /usr/local/bin/autoscaler-app
fetch "$agent_unit_url" /etc/systemd/system/autoscaler-agent.service
fetch "$monitor_unit_url" /etc/systemd/system/autoscaler-monitor.service
fetch "$app_unit_url" /etc/systemd/system/autoscaler-app.service
printf 'AUTOSCALER_GROUP=%s\n' "$group" > /etc/autoscaler/agent.env

systemctl daemon-reload
systemctl enable autoscaler-agent.service autoscaler-monitor.service
systemctl restart autoscaler-agent.service || true
/usr/local/bin/autoscaler-agent --version
echo "autoscaler installed for group $group"
