"""Test-suite wiring: the fastpath pytest plugin supplies namespace fixtures, the
FASTPATH_REQUIRE_ALL skip-is-failure rule and the session-end leak check."""

pytest_plugins = ["fastpath.netns.pytest_plugin"]
