#!/usr/bin/env python3
"""CDK entry point (``cdk synth`` / ``cdk deploy`` run this): the stacks live in infrastructure/stacks/."""

from infrastructure.stacks import build_app

app = build_app()
app.synth()
