"""Adapters that put corral under other RL frameworks, each loadable by dotted path from that
framework's own configuration and each applying corral's responses (a `terminate` ends the episode,
and the framework's user sees why, in that framework's own channel):

- `corral.integrations.mini_swe_agent.CorralEnvironment`: a mini-swe-agent environment
  (`environment_class: corral.integrations.mini_swe_agent.CorralEnvironment`).
- `corral.integrations.rllm.CorralSandbox` / `create_corral_sandbox`: an rLLM `Sandbox` backend.
- `corral.integrations.verl.CorralShellTool`: a verl `BaseTool` (`class_name` in a tool config).
- `corral.integrations.gem`: registers `corral/shell` with `gem.make`, and `CorralPythonCodeTool`,
  GEM's Python code tool running the model's code in corral instead of on the trainer host.

Harbor's `BaseEnvironment` needs Python 3.12 and is not shipped here (see docs).
"""
