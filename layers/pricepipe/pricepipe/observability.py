"""Powertools logger and metrics shared by every function, named by the settings."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

from pricepipe.settings import get_settings

logger = Logger(service=get_settings().service_name)
metrics = Metrics(namespace=get_settings().metrics_namespace, service=get_settings().service_name)
