"""fastpath as a service: one node config (`nodeconfig`) applied as a plan with rollback
(`plan`), and the agent that keeps a node matching it (`service`): health checks, JSON events
(`events`), Prometheus metrics (`metrics`), sd_notify (`notify`) and its systemd unit (`unit`).
A front end: it imports the applications and the runtime, and nothing imports it."""
