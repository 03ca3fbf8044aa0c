"""Watching the pipeline: alarms to an SNS topic, and one CloudWatch dashboard.

:data:`METRICS` lists every metric the dashboards may show: what the code emits in CloudWatch's
Embedded Metric Format (namespace ``PricePipeline``, Powertools adding the ``service`` dimension =
the function's name) and what AWS publishes about the API, the live alias and the state machines.
The CloudWatch dashboard below and the Grafana dashboard (``monitoring/grafana/pricepipe.json``,
checked by tests/infrastructure/test_grafana_dashboard.py) draw only from it, and a test holds each
entry to the handler that emits it.

Everything is named, nothing referenced (function, API, alias and state machine names are fixed),
so this stack depends on no other and can be deployed or changed on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import ArnFormat, CfnOutput, Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infrastructure import catalog
from infrastructure.stacks.config import DeployConfig
from infrastructure.stacks.serving_stack import API_NAME, API_STAGE
from pricepipe.settings import DEFAULTS

# The functions' metric namespace and the registered model's name (a dimension of flow metrics),
# as the functions are deployed with them.
NAMESPACE = DEFAULTS.metrics_namespace
MODEL_NAME = DEFAULTS.model_name
DASHBOARD_NAME = catalog.PROJECT

# Alarm thresholds (per evaluation period).
API_5XX_PER_5_MINUTES = 10
API_P99_LATENCY_MS = 1000


@dataclass(frozen=True)
class MetricGroup:
    """Metrics published together: a namespace, their names, their dimension names, and by whom."""

    namespace: str
    names: tuple[str, ...]
    dimensions: tuple[str, ...]
    emitted_by: str  # a handler (repository path) for our metrics; "AWS" for a service's own
    function: str | None = None  # the catalog function whose name is the ``service`` dimension

    @property
    def service(self) -> str:
        assert self.function is not None
        return catalog.function(self.function).name


METRICS: tuple[MetricGroup, ...] = (
    # The API: rows priced and model latency by model version, in the prediction log line's EMF block.
    MetricGroup(
        NAMESPACE,
        ("Predictions", "PredictLatency"),
        ("service", "model_version"),
        "layers/pricepipe/pricepipe/serving/prediction_log.py",
        catalog.SERVING_FUNCTION,
    ),
    MetricGroup(
        NAMESPACE,
        ("PredictionsLogged", "PredictionLogLinesSkipped"),
        ("service",),
        "functions/prediction_writer/handler.py",
        "prediction-writer",
    ),
    MetricGroup(
        NAMESPACE,
        ("rows_in", "rows_loaded", "rows_quarantined", "rows_duplicate"),
        ("service", "dataset"),
        "functions/etl/handler.py",
        "etl-load",
    ),
    MetricGroup(
        NAMESPACE,
        ("files_failed", "quarantine_ratio"),
        ("service", "dataset"),
        "functions/etl/handler.py",
        "etl-summarize",
    ),
    MetricGroup(
        NAMESPACE,
        (
            "drift_detected",
            "drift_share",
            "performance_rmse",
            "performance_rmse_ratio",
            "performance_mae",
            "performance_mae_ratio",
            "performance_rows_with_actuals",
        ),
        ("service", "model_name"),
        "functions/drift/handler.py",
        "drift-check",
    ),
    MetricGroup(
        NAMESPACE,
        ("challenger_rmse", "challenger_mae", "challenger_mape", "challenger_r2", "challenger_rows"),
        ("service", "model_name"),
        "functions/training/handler.py",
        "training-evaluate",
    ),
    MetricGroup(
        NAMESPACE,
        ("training_job_failed",),
        ("service", "model_name"),
        "functions/training/handler.py",
        "training-job-failed",
    ),
    MetricGroup(
        NAMESPACE,
        ("canary_error_rate", "canary_p99_ms", "canary_prediction_psi"),
        ("service", "model_name"),
        "functions/promotion/handler.py",
        "promotion-check-canary",
    ),
    MetricGroup(
        NAMESPACE,
        ("promotion_rolled_back", "promotion_rejected", "promotion_expired", "promotion_failed"),
        ("service", "model_name"),
        "functions/promotion/handler.py",
        "promotion-abandon",
    ),
    MetricGroup(
        "AWS/ApiGateway",
        ("Count", "4XXError", "5XXError", "Latency", "IntegrationLatency"),
        ("ApiName", "Stage"),
        "AWS",
    ),
    MetricGroup(
        "AWS/Lambda",
        ("Invocations", "Errors", "Throttles", "Duration", "ConcurrentExecutions"),
        ("FunctionName", "Resource"),
        "AWS",
    ),
    MetricGroup(
        "AWS/States",
        ("ExecutionsStarted", "ExecutionsSucceeded", "ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"),
        ("StateMachineArn",),
        "AWS",
    ),
)


def metric_group(namespace: str, name: str) -> MetricGroup:
    """The group that publishes ``name`` in ``namespace``; a name nobody emits is an error."""
    for group in METRICS:
        if group.namespace == namespace and name in group.names:
            return group
    raise KeyError(f"nothing emits {namespace}/{name}: add it to METRICS with the code that emits it")


class MonitoringStack(Stack):
    """An encrypted SSL-only SNS topic, the alarms that publish to it, and the dashboard."""

    def __init__(self, scope: Construct, construct_id: str, *, config: DeployConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.dataset = config.dataset
        self._topic()
        self.alarms: list[cloudwatch.Alarm] = []
        self._api_alarms()
        self._flow_alarms()
        self._dashboard()
        CfnOutput(self, "AlarmTopicArn", value=self.topic.topic_arn)
        CfnOutput(self, "DashboardName", value=self.dashboard.dashboard_name)

    # -- metrics -----------------------------------------------------------------------------------

    def emf(
        self, name: str, statistic: str = "Sum", period: Duration | None = None, **dimensions: str
    ) -> cloudwatch.Metric:
        """One of our EMF metrics with its exact dimensions (``model_version`` and the like as given)."""
        group = metric_group(NAMESPACE, name)
        values = {"service": group.service, "dataset": self.dataset, "model_name": MODEL_NAME, **dimensions}
        return cloudwatch.Metric(
            namespace=NAMESPACE,
            metric_name=name,
            dimensions_map={key: values[key] for key in group.dimensions},
            statistic=statistic,
            period=period or Duration.hours(1),
        )

    def by_model_version(self, name: str, statistic: str) -> cloudwatch.MathExpression:
        """An API metric per model version: whichever versions served in the dashboard's time range
        (a SEARCH, so each series is labelled by its model_version; alarms never use these)."""
        group = metric_group(NAMESPACE, name)
        dims = ",".join(group.dimensions)
        return cloudwatch.MathExpression(
            expression=f'SEARCH(\'{{{NAMESPACE},{dims}}} MetricName="{name}" service="{group.service}"\', '
            f"'{statistic}', 300)",
            using_metrics={},
            label="",  # CloudWatch then labels each series by its dimensions: the model version
            period=Duration.minutes(5),
        )

    def api(self, name: str, statistic: str = "Sum", period: Duration | None = None) -> cloudwatch.Metric:
        metric_group("AWS/ApiGateway", name)
        return cloudwatch.Metric(
            namespace="AWS/ApiGateway",
            metric_name=name,
            dimensions_map={"ApiName": API_NAME, "Stage": API_STAGE},
            statistic=statistic,
            period=period or Duration.minutes(5),
        )

    def live_alias(self, name: str, statistic: str = "Sum") -> cloudwatch.Metric:
        metric_group("AWS/Lambda", name)
        function = catalog.function(catalog.SERVING_FUNCTION).name
        return cloudwatch.Metric(
            namespace="AWS/Lambda",
            metric_name=name,
            dimensions_map={"FunctionName": function, "Resource": f"{function}:{catalog.LIVE_ALIAS}"},
            statistic=statistic,
            period=Duration.minutes(5),
        )

    def executions(
        self, spec: catalog.StateMachineSpec, name: str, period: Duration | None = None
    ) -> cloudwatch.Metric:
        metric_group("AWS/States", name)
        arn = self.format_arn(
            service="states", resource="stateMachine", resource_name=spec.name, arn_format=ArnFormat.COLON_RESOURCE_NAME
        )
        return cloudwatch.Metric(
            namespace="AWS/States",
            metric_name=name,
            dimensions_map={"StateMachineArn": arn},
            statistic="Sum",
            period=period or Duration.minutes(5),
            label=f"{spec.key} {name.removeprefix('Executions').lower()}",
        )

    # -- the topic ---------------------------------------------------------------------------------

    def _topic(self) -> None:
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description="Encrypts the pricepipe alarm topic; CloudWatch alarms may use it to publish",
            enable_key_rotation=True,
        )
        # CloudWatch cannot publish to a topic encrypted with the AWS-managed SNS key: it needs a
        # customer key whose policy lets it, for this account's alarms only.
        alarms_of_this_account = {
            "StringEquals": {"aws:SourceAccount": self.account},
            "ArnLike": {
                "aws:SourceArn": self.format_arn(
                    service="cloudwatch", resource="alarm", resource_name="*", arn_format=ArnFormat.COLON_RESOURCE_NAME
                )
            },
        }
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions=alarms_of_this_account,
            )
        )
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            topic_name=f"{catalog.PROJECT}-alarms",
            display_name="PricePipe alarms",
            master_key=key,
            enforce_ssl=True,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions=alarms_of_this_account,
            )
        )
        if self.config.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(self.config.alarm_email))
        self.action = cloudwatch_actions.SnsAction(self.topic)

    def _alarm(
        self,
        construct_id: str,
        description: str,
        metric: cloudwatch.IMetric,
        threshold: float,
        evaluation_periods: int = 1,
        comparison: cloudwatch.ComparisonOperator = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    ) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            alarm_description=description,
            metric=metric,
            threshold=threshold,
            evaluation_periods=evaluation_periods,
            comparison_operator=comparison,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(self.action)
        self.alarms.append(alarm)
        return alarm

    # -- alarms ------------------------------------------------------------------------------------

    def _api_alarms(self) -> None:
        self._alarm(
            "ApiServerErrorsAlarm",
            f"The prediction API answered {API_5XX_PER_5_MINUTES} or more 5xx in 5 minutes",
            self.api("5XXError"),
            API_5XX_PER_5_MINUTES,
        )
        self._alarm(
            "ApiLatencyAlarm",
            f"The prediction API's p99 latency stayed above {API_P99_LATENCY_MS} ms for 15 minutes",
            self.api("Latency", "p99"),
            API_P99_LATENCY_MS,
            evaluation_periods=3,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        )

    def _flow_alarms(self) -> None:
        self._alarm(
            "DriftDetectedAlarm",
            "The daily drift check found drift over its thresholds (a retraining was started)",
            self.emf("drift_detected", "Maximum"),
            1,
        )
        self._alarm(
            "QuarantineRatioAlarm",
            f"An ETL run quarantined more than {self.config.quarantine_alarm_percent:g}% of its rows",
            self.emf("quarantine_ratio", "Maximum"),
            self.config.quarantine_alarm_percent,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        )
        self._alarm(
            "TrainingJobFailedAlarm",
            "A training job failed (the champion is untouched)",
            self.emf("training_job_failed", "Sum"),
            1,
        )
        for spec in catalog.STATE_MACHINES:
            failed = cloudwatch.MathExpression(
                expression="FILL(failed, 0) + FILL(timedOut, 0)",
                using_metrics={
                    "failed": self.executions(spec, "ExecutionsFailed"),
                    "timedOut": self.executions(spec, "ExecutionsTimedOut"),
                },
                label=f"{spec.key} failed or timed out",
                period=Duration.minutes(5),
            )
            self._alarm(
                f"{catalog.camel(spec.key)}ExecutionsFailedAlarm",
                f"An execution of {spec.name} failed or timed out",
                failed,
                1,
            )

    # -- the dashboard -----------------------------------------------------------------------------

    def _dashboard(self) -> None:
        def graph(
            title: str, metrics: Sequence[cloudwatch.IMetric], width: int = 8, **kwargs: Any
        ) -> cloudwatch.GraphWidget:
            return cloudwatch.GraphWidget(title=title, left=list(metrics), width=width, height=6, **kwargs)

        def threshold(value: float, label: str) -> Mapping[str, Any]:
            return {"left_annotations": [cloudwatch.HorizontalAnnotation(value=value, label=label)]}

        emf = self.emf
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=DASHBOARD_NAME,
            default_interval=Duration.days(7),
        )
        self.dashboard.add_widgets(
            cloudwatch.TextWidget(markdown="# Prediction API", width=24, height=1),
        )
        self.dashboard.add_widgets(
            graph("API requests and errors", [self.api("Count"), self.api("4XXError"), self.api("5XXError")]),
            graph(
                "API p99 latency (ms)",
                [self.api("Latency", "p99"), self.api("IntegrationLatency", "p99"), self.live_alias("Duration", "p99")],
                **threshold(API_P99_LATENCY_MS, "alarm"),
            ),
            graph(
                f"Live alias ({catalog.LIVE_ALIAS})",
                [self.live_alias("Invocations"), self.live_alias("Errors"), self.live_alias("Throttles")],
            ),
        )
        self.dashboard.add_widgets(
            graph("Predictions by model version", [self.by_model_version("Predictions", "Sum")], width=12),
            graph(
                "Predict latency p99 by model version (ms)",
                [self.by_model_version("PredictLatency", "p99")],
                width=12,
            ),
        )
        self.dashboard.add_widgets(cloudwatch.TextWidget(markdown="# ETL, drift and training", width=24, height=1))
        self.dashboard.add_widgets(
            graph("ETL rows", [emf(n) for n in ("rows_in", "rows_loaded", "rows_quarantined", "rows_duplicate")]),
            graph(
                "ETL quarantine ratio (%)",
                [emf("quarantine_ratio", "Maximum"), emf("files_failed")],
                **threshold(self.config.quarantine_alarm_percent, "alarm"),
            ),
            graph(
                "Prediction log",
                [emf("PredictionsLogged"), emf("PredictionLogLinesSkipped")],
            ),
        )
        self.dashboard.add_widgets(
            graph(
                "Drift detected / share of drifted features (%)",
                [emf("drift_detected", "Maximum"), emf("drift_share", "Maximum")],
            ),
            graph(
                "Performance drift (current / training holdout)",
                [emf("performance_rmse_ratio", "Maximum"), emf("performance_mae_ratio", "Maximum")],
            ),
            graph(
                "Performance on rows with actuals",
                [
                    emf("performance_rmse", "Maximum"),
                    emf("performance_mae", "Maximum"),
                    emf("performance_rows_with_actuals", "Maximum"),
                ],
            ),
        )
        self.dashboard.add_widgets(
            graph(
                "Challenger holdout RMSE / MAE",
                [emf("challenger_rmse", "Maximum"), emf("challenger_mae", "Maximum")],
                width=6,
            ),
            graph("Challenger holdout R²", [emf("challenger_r2", "Maximum")], width=6),
            graph(
                "Training jobs failed / promotions ended without promoting",
                [emf("training_job_failed")]
                + [
                    emf(n)
                    for n in ("promotion_rolled_back", "promotion_rejected", "promotion_expired", "promotion_failed")
                ],
                width=6,
            ),
            graph(
                "Canary checks (error rate, p99 ms, prediction PSI)",
                [emf(n, "Maximum") for n in ("canary_error_rate", "canary_p99_ms", "canary_prediction_psi")],
                width=6,
            ),
        )
        self.dashboard.add_widgets(cloudwatch.TextWidget(markdown="# State machines", width=24, height=1))
        day = Duration.days(1)
        self.dashboard.add_widgets(
            *(
                graph(
                    f"{spec.name} executions",
                    [
                        self.executions(spec, "ExecutionsSucceeded", day),
                        self.executions(spec, "ExecutionsFailed", day),
                        self.executions(spec, "ExecutionsTimedOut", day),
                    ],
                    width=6,
                )
                for spec in catalog.STATE_MACHINES
            )
        )
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms), width=24, height=4)
        )
