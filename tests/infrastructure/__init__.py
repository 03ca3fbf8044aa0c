"""Synth-time tests of the CDK app: templates, layers, cdk-nag and the pinned CLI."""
