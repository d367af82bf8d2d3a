#!/bin/sh
# User-data of every application instance the controller launches when the group has a load
# balancer (the daemon gives it with `[load_balancer] kind = "elb"`): the application runs
# (autoscaler-app.service, in the AMI) and the agent reports its real load instead of a simulated
# one. Without a load balancer instances get no user-data: the agent's simulated load, as the
# assignment's demo has it.
set -eu
mkdir -p /etc/autoscaler
grep -q '^AUTOSCALER_LOAD=' /etc/autoscaler/agent.env 2>/dev/null ||
  printf 'AUTOSCALER_LOAD=app\nAUTOSCALER_APP_ADDRESS=127.0.0.1:8080\n' >> /etc/autoscaler/agent.env
systemctl enable --now autoscaler-app.service
systemctl restart autoscaler-agent.service
