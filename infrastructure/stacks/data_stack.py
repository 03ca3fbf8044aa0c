"""Where the data lives: an isolated network, the S3 buckets and PostgreSQL.

Kept apart from the pipeline stack so the stateful part changes rarely and can be protected
(deletion protection, retained buckets) while functions and state machines are redeployed often.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import ArnFormat, Aws, CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infrastructure import catalog, nag
from infrastructure.catalog import PROJECT
from infrastructure.stacks.bastion import DatabaseBastion
from infrastructure.stacks.config import DeployConfig
from pricepipe.settings import DEFAULTS

DATABASE_PORT = 5432
DATABASE_NAME = PROJECT
DATABASE_USER = PROJECT
CONTROL_PLANE_ENDPOINTS = {
    "Lambda": ec2.InterfaceVpcEndpointAwsService.LAMBDA_,
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "StepFunctions": ec2.InterfaceVpcEndpointAwsService.STEP_FUNCTIONS,
    "CloudWatchMonitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
}


@dataclass(frozen=True)
class BucketNames:
    """Bucket names that any stack can compute, so using a bucket never needs a cross-stack reference.

    They embed only the account and region (pseudo parameters, resolved by each stack itself): IAM
    statements in the pipeline stack then read ``arn:<partition>:s3:::pricepipe-prod-landing-<account>-
    <region>/landing/*``, which reviewers and cdk-nag acknowledgments can name exactly, instead of an
    opaque ``Fn::GetStackOutput`` of a generated logical id.
    """

    landing: str
    lake: str
    artifacts: str
    access_logs: str
    audit: str

    @classmethod
    def for_stage(cls, stage: str) -> BucketNames:
        def name(purpose: str) -> str:
            return f"{PROJECT}-{stage}-{purpose}-{Aws.ACCOUNT_ID}-{Aws.REGION}"

        return cls(
            landing=name("landing"),
            lake=name("lake"),
            artifacts=name("artifacts"),
            access_logs=name("logs"),
            audit=name("audit"),
        )


class DataStack(Stack):
    """VPC with its endpoints, buckets (landing, lake, artifacts, access logs), RDS PostgreSQL, and an
    optional Session Manager bastion to reach the database (``pricepipe:bastion=true``)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: DeployConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.bucket_names = BucketNames.for_stage(config.stage)
        self._network()
        self._buckets()
        self._database()
        if config.audit_trail:
            self._audit_trail()
        CfnOutput(self, "LandingBucketName", value=self.landing_bucket.bucket_name)
        CfnOutput(self, "LakeBucketName", value=self.lake_bucket.bucket_name)
        CfnOutput(self, "ArtifactsBucketName", value=self.artifacts_bucket.bucket_name)
        CfnOutput(self, "DatabaseSecretArn", value=self.database_secret.secret_arn)

    # -- network -----------------------------------------------------------------------------------

    def _network(self) -> None:
        flow_logs = logs.LogGroup(self, "FlowLogs", retention=self.config.log_retention)
        # Isolated subnets only: no internet gateway, no NAT (cost and exposure). Everything in them
        # reaches AWS through endpoints: S3 (gateway), Secrets Manager, and for the Batch training
        # job on Fargate, ECR and CloudWatch Logs (interface endpoints, below).
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24)
            ],
            flow_logs={
                "all": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
        )
        self.subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)

        s3_endpoint = self.vpc.add_gateway_endpoint(
            "S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[self.subnets]
        )
        # Nothing in this VPC has business with another account's buckets: a stolen credential or a
        # bug cannot copy data out through the endpoint.
        s3_endpoint.add_to_policy(
            iam.PolicyStatement(
                principals=[iam.AnyPrincipal()],
                actions=["s3:*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:ResourceAccount": self.account}},
            )
        )
        # The one exception: ECR serves image layers from an AWS-owned bucket, so Fargate's image pull
        # needs GetObject there (AWS's documented minimum for ECR behind an S3 endpoint policy).
        s3_endpoint.add_to_policy(
            iam.PolicyStatement(
                principals=[iam.AnyPrincipal()],
                actions=["s3:GetObject"],
                resources=[f"arn:{self.partition}:s3:::prod-{self.region}-starport-layer-bucket/*"],
            )
        )

        self.database_clients = ec2.SecurityGroup(
            self,
            "DatabaseClients",
            vpc=self.vpc,
            description="Pipeline functions and secret rotation: may reach PostgreSQL and the AWS endpoints",
            allow_all_outbound=False,
        )
        # Port 443 anywhere only reaches the VPC endpoints: the subnets have no route out.
        self.database_clients.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to VPC endpoints")

        self.secrets_endpoint = self.vpc.add_interface_endpoint(
            "SecretsManager",
            service=ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
            private_dns_enabled=True,
            subnets=self.subnets,
            open=False,
        )
        self.secrets_endpoint.connections.allow_default_port_from(self.database_clients, "Database clients")

        # The Batch training job runs on Fargate with the database-clients group and no public IP.
        # Fargate (platform 1.4+) pulls the image and ships the awslogs driver's output over the task's
        # own network interface, so it needs ECR's API (auth token, manifest) and registry (layers via
        # the S3 gateway above) and CloudWatch Logs here. Not needed: STS (task-role credentials come
        # from the ECS credentials endpoint inside the task, not from STS), CloudWatch metrics (the job
        # publishes none; the failure metric is the job-failed function's), ECS (only EC2 container
        # instances call it).
        self.fargate_endpoints = {
            name: self.vpc.add_interface_endpoint(
                name, service=service, private_dns_enabled=True, subnets=self.subnets, open=False
            )
            for name, service in (
                ("EcrApi", ec2.InterfaceVpcEndpointAwsService.ECR),
                ("EcrDocker", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER),
                ("Logs", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS),
            )
        }
        for endpoint in self.fargate_endpoints.values():
            endpoint.connections.allow_default_port_from(self.database_clients, "Batch jobs on Fargate")

        # The promotion steps run in these subnets (they use the database) and act on AWS APIs that
        # have no gateway endpoint: Lambda (the serving function's layers, versions and alias), SSM
        # (the champion's model-layer parameter), Step Functions (other promotions, approvals) and
        # CloudWatch (a canary's metrics). Four interface endpoints in two AZs cost less than a NAT
        # gateway and open no route out. The SSM one also serves the bastion's agent.
        self.control_plane_endpoints = {
            name: self.vpc.add_interface_endpoint(
                name, service=service, private_dns_enabled=True, subnets=self.subnets, open=False
            )
            for name, service in CONTROL_PLANE_ENDPOINTS.items()
        }
        for endpoint in self.control_plane_endpoints.values():
            endpoint.connections.allow_default_port_from(self.database_clients, "Promotion steps")

    # -- buckets -----------------------------------------------------------------------------------

    def _buckets(self) -> None:
        names = self.bucket_names
        self.access_logs_bucket = self._bucket(
            "AccessLogs",
            names.access_logs,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(365))],
            log=False,
        )
        self.landing_bucket = self._bucket(
            "Landing",
            names.landing,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="landing-to-infrequent-access",
                    prefix=DEFAULTS.contract_landing_prefix(self.config.dataset),
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INFREQUENT_ACCESS, transition_after=Duration.days(30)
                        )
                    ],
                ),
                s3.LifecycleRule(
                    id="expire-quarantine",
                    prefix=DEFAULTS.contract_quarantine_prefix(self.config.dataset),
                    expiration=Duration.days(90),
                ),
            ],
        )
        # Object-created events go to EventBridge (the ETL trigger). Set on the L1: the L2's
        # ``event_bridge_enabled`` deploys a notifications custom resource (a Lambda with a managed
        # policy and s3:PutBucketNotification on *) for what CloudFormation supports natively.
        cfn_landing = self.landing_bucket.node.default_child
        assert isinstance(cfn_landing, s3.CfnBucket)
        cfn_landing.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
        )
        # The lake is derived data (rebuildable from landing + PostgreSQL): no versioning.
        self.lake_bucket = self._bucket("Lake", names.lake)
        self.artifacts_bucket = self._bucket(
            "Artifacts",
            names.artifacts,
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-etl-manifests", prefix=DEFAULTS.manifest_prefix, expiration=Duration.days(14)
                ),
                s3.LifecycleRule(
                    id="expire-scoring-manifests",
                    prefix=DEFAULTS.scoring_manifest_prefix,
                    expiration=Duration.days(14),
                ),
                s3.LifecycleRule(id="expire-noncurrent-versions", noncurrent_version_expiration=Duration.days(30)),
            ],
        )

    def _bucket(
        self,
        construct_id: str,
        bucket_name: str,
        *,
        versioned: bool = False,
        lifecycle_rules: list[s3.LifecycleRule] | None = None,
        log: bool = True,
    ) -> s3.Bucket:
        rules = [
            s3.LifecycleRule(id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(7)),
            *(lifecycle_rules or []),
        ]
        return s3.Bucket(
            self,
            construct_id,
            bucket_name=bucket_name,
            # SSE-S3: server-access-log delivery only supports S3-managed keys on the destination, and
            # a customer key on the data buckets would add KMS calls to every ETL object for no
            # isolation gain inside one account.
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=versioned,
            lifecycle_rules=rules,
            server_access_logs_bucket=self.access_logs_bucket if log else None,
            server_access_logs_prefix=f"{construct_id.lower()}/" if log else None,
            # Data outlives the stack; a retained bucket can be re-imported or emptied by hand.
            removal_policy=RemovalPolicy.RETAIN,
        )

    # -- audit trail -------------------------------------------------------------------------------

    def _audit_trail(self) -> None:
        """Data events of what the audit trail in ``model_registry.deployments`` names: the artifacts
        bucket's objects (models, serving artifacts), the state machines, and invokes of the promotion
        command function (``pipectl approve | reject | rollback``): CloudTrail records the principal
        that really made each call, which a row's self-reported actor can be checked against.

        Advanced event selectors, since basic ones cover only S3, Lambda and DynamoDB
        (https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_DataResource.html) and a
        trail takes one kind or the other. No management events: every account records those in its
        event history, and a second trail's copy of them is billed. The machines and the function by
        their fixed names, so this stack needs no reference to the pipeline stack.
        """
        bucket = self._bucket(
            "AuditTrail",
            self.bucket_names.audit,
            lifecycle_rules=[s3.LifecycleRule(id="expire-audit-trail", expiration=Duration.days(400))],
        )
        trail = cloudtrail.Trail(
            self,
            "Trail",
            bucket=bucket,
            is_multi_region_trail=False,
            include_global_service_events=False,
            enable_file_validation=True,
        )
        machines = [
            self.format_arn(
                service="states",
                resource="stateMachine",
                resource_name=m.name,
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )
            for m in catalog.STATE_MACHINES
        ]
        command = self.format_arn(
            service="lambda",
            resource="function",
            resource_name=catalog.function("promotion-command").name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

        def selector(name: str, resource_type: str, operator: str, values: list[str]) -> dict[str, Any]:
            return {
                "Name": name,
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["Data"]},
                    {"Field": "resources.type", "Equals": [resource_type]},
                    {"Field": "resources.ARN", operator: values},
                ],
            }

        cfn = trail.node.default_child
        assert isinstance(cfn, cloudtrail.CfnTrail)
        cfn.add_property_deletion_override("EventSelectors")  # the L2 writes an empty list; none may be set
        cfn.add_property_override(
            "AdvancedEventSelectors",
            [
                selector(
                    "artifacts objects", "AWS::S3::Object", "StartsWith", [f"{self.artifacts_bucket.bucket_arn}/"]
                ),
                selector("state machines", "AWS::StepFunctions::StateMachine", "Equals", machines),
                selector("promotion commands", "AWS::Lambda::Function", "Equals", [command]),
            ],
        )
        CfnOutput(self, "AuditTrailArn", value=trail.trail_arn)

    # -- database ----------------------------------------------------------------------------------

    def _database(self) -> None:
        config = self.config
        # A full minor version, not the major "16" alone: RDS no longer creates new instances on some
        # 16.x (16.1-16.8 are deprecated for creation in cfn-lint's data, taken from RDS's
        # DescribeDBEngineVersions; W3691), and a bare major leaves the version to whatever RDS picks.
        # 16.13 is creatable per that data and the RDS for PostgreSQL release calendar
        # (https://docs.aws.amazon.com/AmazonRDS/latest/PostgreSQLReleaseNotes/postgresql-release-calendar.html);
        # auto_minor_version_upgrade below moves it forward in the maintenance window.
        engine = rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16_13)
        self.database_security_group = ec2.SecurityGroup(
            self,
            "Database",
            vpc=self.vpc,
            description=f"PostgreSQL: {DATABASE_PORT} from the database clients group only",
            allow_all_outbound=False,
        )
        # A fixed identifier lets the PostgreSQL log groups exist (with retention) before RDS starts
        # writing to them; otherwise RDS creates them without retention and CDK would need its
        # log-retention custom resource (another Lambda) to fix that afterwards.
        identifier = f"{PROJECT}-{config.stage}"
        log_exports = ("postgresql", "upgrade")
        log_groups = [
            logs.LogGroup(
                self,
                f"DatabaseLogs{name.capitalize()}",
                log_group_name=f"/aws/rds/instance/{identifier}/{name}",
                retention=config.log_retention,
                removal_policy=RemovalPolicy.RETAIN if config.retain_data else RemovalPolicy.DESTROY,
            )
            for name in log_exports
        ]
        self.database = rds.DatabaseInstance(
            self,
            "Postgres",
            instance_identifier=identifier,
            engine=engine,
            instance_type=ec2.InstanceType(config.db_instance_type),
            database_name=DATABASE_NAME,
            port=DATABASE_PORT,
            # No fixed secret name: a deleted secret keeps its name for its recovery window, which
            # would block re-creating the stack.
            credentials=rds.Credentials.from_generated_secret(DATABASE_USER),
            vpc=self.vpc,
            vpc_subnets=self.subnets,
            security_groups=[self.database_security_group],
            publicly_accessible=False,
            multi_az=config.db_multi_az,
            storage_encrypted=True,
            storage_type=rds.StorageType.GP3,
            allocated_storage=config.db_allocated_storage_gb,
            max_allocated_storage=config.db_max_allocated_storage_gb,
            iam_authentication=True,
            ca_certificate=rds.CaCertificate.RDS_CA_RSA2048_G1,
            parameter_group=rds.ParameterGroup(
                self,
                "PostgresParameters",
                engine=engine,
                description="TLS only; log slow statements",
                parameters={"rds.force_ssl": "1", "log_min_duration_statement": "1000"},
            ),
            cloudwatch_logs_exports=list(log_exports),
            backup_retention=Duration.days(7),
            # After the nightly ETL (02:00 UTC by default), before business hours in Europe.
            preferred_backup_window="04:00-04:30",
            preferred_maintenance_window="sun:05:00-sun:05:30",
            auto_minor_version_upgrade=True,
            copy_tags_to_snapshot=True,
            deletion_protection=config.retain_data,
            removal_policy=RemovalPolicy.SNAPSHOT if config.retain_data else RemovalPolicy.DESTROY,
        )
        cfn_database = self.database.node.default_child
        assert isinstance(cfn_database, rds.CfnDBInstance)
        for log_group in log_groups:
            cfn_database.node.add_dependency(log_group)
        # The same rule (same construct id) that the secret rotation below asks for: one ingress rule.
        self.database.connections.allow_default_port_from(self.database_clients, "PostgreSQL from the database clients")
        nag.acknowledge(
            self.database,
            "RDS11",
            f"PostgreSQL keeps its default port {DATABASE_PORT}: the instance has no public address, sits in "
            "subnets without a route out, and its security group admits only the database-clients group; "
            "a non-standard port would add no protection.",
        )
        if not config.db_multi_az:
            nag.acknowledge(
                self.database,
                "RDS3",
                f"Single-AZ is chosen for stage {config.stage} (pricepipe:dbMultiAz=false) to halve the "
                "cost of a disposable database; production keeps the Multi-AZ default.",
            )
        if not config.retain_data:
            nag.acknowledge(
                self.database,
                "RDS10",
                f"Deletion protection is off for stage {config.stage} (pricepipe:retainData=false) so the "
                "stack can be torn down; production keeps it on with a final snapshot.",
            )

        secret = self.database.secret
        assert secret is not None
        self.database_secret: secretsmanager.ISecret = secret
        # The rotation function runs in the clients group: one ingress rule on the database covers it.
        self.database.add_rotation_single_user(
            automatically_after=Duration.days(30),
            security_group=self.database_clients,
            vpc_subnets=self.subnets,
        )

        # How people browse MLflow in AWS: `mlflow ui` on their own machine against this database,
        # through a Session Manager tunnel to this optional host (see bastion.py for the commands).
        self.bastion = (
            DatabaseBastion(
                self,
                "Bastion",
                vpc=self.vpc,
                subnets=self.subnets,
                database=self.database,
                ssm_endpoint=self.control_plane_endpoints["Ssm"],
            )
            if config.bastion
            else None
        )
