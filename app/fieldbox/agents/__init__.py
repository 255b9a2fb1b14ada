"""Agents: TFLite models declared in manifests, with real pre- and post-processing."""
