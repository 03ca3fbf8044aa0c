"""DataStack: the network, the buckets and PostgreSQL, as synthesized from the default (production) context."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Capture, Match, Template
from cdk_nag import AwsSolutionsChecks

from infrastructure import catalog
from infrastructure.stacks import DeployConfig
from infrastructure.stacks.application import project_context
from infrastructure.stacks.data_stack import DataStack

pytestmark = pytest.mark.infra

BUCKETS = 5  # landing, lake, artifacts, server access logs, audit trail (prod)


def _of_type(resources: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def _bucket(resources: dict[str, dict[str, Any]], purpose: str) -> tuple[str, dict[str, Any]]:
    """The bucket whose name is pricepipe-<stage>-<purpose>-<account>-<region>."""
    for name, resource in _of_type(resources, "AWS::S3::Bucket").items():
        parts = resource["Properties"]["BucketName"]["Fn::Join"][1]
        if parts[0].endswith(f"-{purpose}-"):
            return name, resource
    raise AssertionError(f"no {purpose} bucket")


def test_given_the_data_stack_then_every_bucket_is_encrypted_and_blocks_public_access(data_template: Template) -> None:
    data_template.resource_count_is("AWS::S3::Bucket", BUCKETS)
    data_template.all_resources_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        },
    )


def test_given_the_data_stack_then_every_bucket_policy_denies_requests_without_tls(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    buckets = set(_of_type(data_resources, "AWS::S3::Bucket"))
    guarded = set()
    for policy in _of_type(data_resources, "AWS::S3::BucketPolicy").values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        if any(
            s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in statements
        ):
            guarded.add(policy["Properties"]["Bucket"]["Ref"])
    assert guarded == buckets


def test_given_the_landing_bucket_then_quarantine_expires_and_landing_moves_to_infrequent_access(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    _, landing = _bucket(data_resources, "landing")
    rules = {rule["Id"]: rule for rule in landing["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-quarantine"]["Prefix"] == "quarantine/hotel_rates/"  # the deployed contract's folders
    assert rules["expire-quarantine"]["ExpirationInDays"] == 90
    assert rules["landing-to-infrequent-access"]["Prefix"] == "landing/hotel_rates/"
    assert rules["landing-to-infrequent-access"]["Transitions"] == [
        {"StorageClass": "STANDARD_IA", "TransitionInDays": 30}
    ]
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


def test_given_the_artifacts_bucket_then_it_is_versioned_and_manifests_and_old_versions_expire(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    _, artifacts = _bucket(data_resources, "artifacts")
    assert artifacts["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {rule["Id"]: rule for rule in artifacts["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-etl-manifests"]["Prefix"] == "manifests/etl/"  # the ETL manifests, all there is
    assert rules["expire-etl-manifests"]["ExpirationInDays"] == 14
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}


def test_given_the_landing_bucket_then_it_sends_events_to_eventbridge_without_a_custom_resource(
    data_resources: dict[str, dict[str, Any]], data_template: Template
) -> None:
    _, landing = _bucket(data_resources, "landing")
    assert landing["Properties"]["NotificationConfiguration"] == {
        "EventBridgeConfiguration": {"EventBridgeEnabled": True}
    }
    data_template.resource_count_is("Custom::S3BucketNotifications", 0)


def test_given_the_data_buckets_then_they_log_access_to_the_access_log_bucket(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    logs_bucket, _ = _bucket(data_resources, "logs")
    for purpose in ("landing", "lake", "artifacts"):
        _, bucket = _bucket(data_resources, purpose)
        logging = bucket["Properties"]["LoggingConfiguration"]
        assert logging["DestinationBucketName"] == {"Ref": logs_bucket}, purpose
        assert logging["LogFilePrefix"] == f"{purpose}/"
    assert not any(
        r["Type"] == "AWS::S3::Bucket" and r["DeletionPolicy"] != "Retain" for r in data_resources.values()
    ), "data outlives the stack"


def test_given_the_database_then_it_is_private_encrypted_backed_up_and_protected(data_template: Template) -> None:
    retention = Capture()
    data_template.has_resource(
        "AWS::RDS::DBInstance",
        {
            "Properties": Match.object_like(
                {
                    "Engine": "postgres",
                    # a full minor version: RDS creates no new instance on a deprecated one (cfn-lint W3691)
                    "EngineVersion": Match.string_like_regexp(r"^16\.[0-9]+$"),
                    "PubliclyAccessible": False,
                    "StorageEncrypted": True,
                    "BackupRetentionPeriod": retention,
                    "DeletionProtection": True,
                    "MultiAZ": True,
                    "EnableIAMDatabaseAuthentication": True,
                    "EnableCloudwatchLogsExports": ["postgresql", "upgrade"],
                    "Port": "5432",
                }
            ),
            "DeletionPolicy": "Snapshot",
            "UpdateReplacePolicy": "Snapshot",
        },
    )
    assert retention.as_number() >= 7


def test_given_the_database_then_it_only_accepts_tls(data_template: Template) -> None:
    data_template.has_resource_properties(
        "AWS::RDS::DBParameterGroup", {"Family": "postgres16", "Parameters": Match.object_like({"rds.force_ssl": "1"})}
    )


def test_given_the_database_then_its_log_groups_exist_with_retention_before_it(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    groups = {
        r["Properties"]["LogGroupName"]: (name, r)
        for name, r in _of_type(data_resources, "AWS::Logs::LogGroup").items()
        if "LogGroupName" in r["Properties"]
    }
    instance = next(iter(_of_type(data_resources, "AWS::RDS::DBInstance").values()))
    for export in ("postgresql", "upgrade"):
        name, group = groups[f"/aws/rds/instance/pricepipe-prod/{export}"]
        assert group["Properties"]["RetentionInDays"] == 90
        assert name in instance["DependsOn"]
    assert not _of_type(data_resources, "Custom::LogRetention")


def test_given_the_database_secret_then_it_is_generated_and_rotated(data_template: Template) -> None:
    data_template.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {"GenerateSecretString": Match.object_like({"GenerateStringKey": "password"})},
    )
    data_template.has_resource_properties(
        "AWS::SecretsManager::RotationSchedule",
        {
            "SecretId": {"Ref": Match.string_like_regexp("PostgresSecretAttachment")},
            "RotationRules": {"ScheduleExpression": "rate(30 days)"},
        },
    )


def test_given_the_database_security_group_then_only_the_database_clients_group_reaches_postgres(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    groups = _of_type(data_resources, "AWS::EC2::SecurityGroup")
    database_group = next(n for n, g in groups.items() if g["Properties"]["GroupDescription"].startswith("PostgreSQL"))
    clients_group = next(n for n in groups if n.startswith("DatabaseClients"))
    instance_name = next(iter(_of_type(data_resources, "AWS::RDS::DBInstance")))
    assert "SecurityGroupIngress" not in groups[database_group]["Properties"]
    ingress = [
        r["Properties"]
        for r in _of_type(data_resources, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [database_group, "GroupId"]}
    ]
    assert ingress == [
        {
            "Description": "PostgreSQL from the database clients",
            "FromPort": {"Fn::GetAtt": [instance_name, "Endpoint.Port"]},
            "ToPort": {"Fn::GetAtt": [instance_name, "Endpoint.Port"]},
            "GroupId": {"Fn::GetAtt": [database_group, "GroupId"]},
            "IpProtocol": "tcp",
            "SourceSecurityGroupId": {"Fn::GetAtt": [clients_group, "GroupId"]},
        }
    ]


def test_given_the_vpc_then_it_has_isolated_subnets_only_no_nat_and_flow_logs(data_template: Template) -> None:
    data_template.resource_count_is("AWS::EC2::NatGateway", 0)
    data_template.resource_count_is("AWS::EC2::InternetGateway", 0)
    data_template.resource_count_is("AWS::EC2::Subnet", 2)
    data_template.all_resources_properties("AWS::EC2::Subnet", {"MapPublicIpOnLaunch": False})
    data_template.has_resource_properties(
        "AWS::EC2::FlowLog", {"ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs"}
    )


def test_given_the_vpc_then_s3_and_secrets_manager_are_reached_through_endpoints(data_template: Template) -> None:
    data_template.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "VpcEndpointType": "Gateway",
            "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".s3"]]},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {"Condition": {"StringEquals": {"aws:ResourceAccount": {"Ref": "AWS::AccountId"}}}}
                        )
                    ]
                ),
                "Version": "2012-10-17",
            },
        },
    )
    data_template.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "VpcEndpointType": "Interface",
            "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".secretsmanager"]]},
            "PrivateDnsEnabled": True,
        },
    )


def test_given_the_s3_endpoint_policy_then_only_this_account_and_ecr_image_layers_are_reachable(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    (endpoint,) = [
        r for r in _of_type(data_resources, "AWS::EC2::VPCEndpoint").values() if r["Properties"].get("PolicyDocument")
    ]
    statements = endpoint["Properties"]["PolicyDocument"]["Statement"]
    own, layers = statements
    assert own["Action"] == "s3:*"
    assert own["Condition"] == {"StringEquals": {"aws:ResourceAccount": {"Ref": "AWS::AccountId"}}}
    # ECR keeps image layers in an AWS-owned bucket: GetObject there only, or Fargate cannot pull.
    assert layers["Action"] == "s3:GetObject"
    assert "Condition" not in layers
    assert layers["Resource"] == {
        "Fn::Join": [
            "",
            ["arn:", {"Ref": "AWS::Partition"}, ":s3:::prod-", {"Ref": "AWS::Region"}, "-starport-layer-bucket/*"],
        ]
    }


@pytest.mark.parametrize("service", ["ecr.api", "ecr.dkr", "logs", "secretsmanager"])
def test_given_the_vpc_then_fargate_jobs_reach_ecr_logs_and_secrets_through_endpoints_open_to_database_clients(
    service: str, data_resources: dict[str, dict[str, Any]]
) -> None:
    (name, endpoint) = next(
        (n, r)
        for n, r in _of_type(data_resources, "AWS::EC2::VPCEndpoint").items()
        if r["Properties"]["ServiceName"]["Fn::Join"][1][-1] == f".{service}"
    )
    props = endpoint["Properties"]
    assert props["VpcEndpointType"] == "Interface"
    assert props["PrivateDnsEnabled"] is True
    assert len(props["SubnetIds"]) == 2
    (group,) = props["SecurityGroupIds"]
    sources = [
        r["Properties"]
        for r in _of_type(data_resources, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == group
    ]
    assert len(sources) == 1, f"{name}: one ingress rule"
    assert sources[0]["FromPort"] == sources[0]["ToPort"] == 443
    assert sources[0]["SourceSecurityGroupId"]["Fn::GetAtt"][0].startswith("DatabaseClients")


def test_given_the_default_context_then_there_is_no_bastion_and_no_session_manager_channel_endpoint(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    assert _of_type(data_resources, "AWS::EC2::Instance") == {}
    services = [
        r["Properties"]["ServiceName"]["Fn::Join"][1][-1]
        for r in _of_type(data_resources, "AWS::EC2::VPCEndpoint").values()
    ]
    assert not [s for s in services if "messages" in s], "ssmmessages and ec2messages come with the bastion only"


def test_given_the_promotion_steps_in_the_vpc_then_lambda_ssm_states_and_monitoring_are_reached_through_endpoints(
    data_resources: dict[str, dict[str, Any]],
) -> None:
    """Promotion steps use the database (so run in the isolated subnets) and call these APIs."""
    endpoints = {
        r["Properties"]["ServiceName"]["Fn::Join"][1][-1]: r["Properties"]
        for r in _of_type(data_resources, "AWS::EC2::VPCEndpoint").values()
    }
    for service in (".lambda", ".ssm", ".states", ".monitoring"):
        props = endpoints[service]
        assert props["VpcEndpointType"] == "Interface"
        assert props["PrivateDnsEnabled"] is True
        (group,) = props["SecurityGroupIds"]
        sources = [
            r["Properties"]
            for r in _of_type(data_resources, "AWS::EC2::SecurityGroupIngress").values()
            if r["Properties"]["GroupId"] == group
        ]
        assert [s["SourceSecurityGroupId"]["Fn::GetAtt"][0][: len("DatabaseClients")] for s in sources] == [
            "DatabaseClients"
        ]
        assert sources[0]["FromPort"] == sources[0]["ToPort"] == 443


def test_given_the_data_stack_then_a_cli_finds_buckets_and_secret_by_output_name(data_template: Template) -> None:
    outputs = data_template.to_json()["Outputs"]
    for name in ("LandingBucketName", "LakeBucketName", "ArtifactsBucketName", "DatabaseSecretArn"):
        assert name in outputs
        assert "Export" not in outputs[name], "exports would pin the stacks together"


def test_given_stage_dev_when_synthesized_then_the_database_is_disposable_and_still_passes_cdk_nag() -> None:
    app = App(context={**project_context(), "pricepipe:stage": "dev"})
    config = DeployConfig.from_context(app.node)
    stack = DataStack(app, "DevData", config=config)

    template = Template.from_stack(stack)
    template.has_resource(
        "AWS::RDS::DBInstance",
        {
            "Properties": Match.object_like({"DeletionProtection": False, "MultiAZ": False}),
            "DeletionPolicy": "Delete",
        },
    )
    report = AwsSolutionsChecks().validate_scope(app)
    assert [v.rule_name for v in report.violations] == []


def test_given_a_stack_without_the_data_stack_then_bucket_names_need_no_cross_stack_reference() -> None:
    """Bucket names resolve in any stack to the same pseudo-parameter expression."""
    app = App(context=project_context())
    data = DataStack(app, "Data", config=DeployConfig())
    other = Stack(app, "Other")
    assert other.resolve(data.bucket_names.landing) == data.resolve(data.bucket_names.landing)
    assert "Fn::GetStackOutput" not in str(other.resolve(data.bucket_names.landing))


@pytest.fixture(scope="module")
def bastion_stack() -> tuple[App, dict[str, Any]]:
    app = App(context={**project_context(), "pricepipe:bastion": "true"})
    stack = DataStack(app, "WithBastion", config=DeployConfig.from_context(app.node))
    return app, dict(Template.from_stack(stack).to_json())


def test_given_the_bastion_context_then_the_app_still_passes_cdk_nag(bastion_stack: tuple[App, dict[str, Any]]) -> None:
    app, _ = bastion_stack
    report = AwsSolutionsChecks().validate_scope(app)
    assert [v.rule_name for v in report.violations] == []


def test_given_the_bastion_then_it_is_ssm_only_imdsv2_encrypted_and_private(
    bastion_stack: tuple[App, dict[str, Any]],
) -> None:
    _, template = bastion_stack
    resources = template["Resources"]
    (instance,) = _of_type(resources, "AWS::EC2::Instance").values()
    props = instance["Properties"]
    assert "KeyName" not in props, "no SSH key: Session Manager only"
    assert props["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is False
    assert [d["Ebs"]["Encrypted"] for d in props["BlockDeviceMappings"]] == [True]
    (template_,) = _of_type(resources, "AWS::EC2::LaunchTemplate").values()
    assert template_["Properties"]["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"

    profile = props["IamInstanceProfile"]["Ref"]
    (role,) = resources[profile]["Properties"]["Roles"]
    role_props = resources[role["Ref"]]["Properties"]
    assert [arn["Fn::Join"][1][-1] for arn in role_props["ManagedPolicyArns"]] == [
        ":iam::aws:policy/AmazonSSMManagedInstanceCore"
    ]
    attached = [p for p in _of_type(resources, "AWS::IAM::Policy").values() if role in p["Properties"]["Roles"]]
    assert attached == [], "nothing beyond the SSM agent's policy: no data, secret or bucket access"


def test_given_the_bastion_then_its_group_accepts_nothing_and_reaches_only_postgres_and_session_manager(
    bastion_stack: tuple[App, dict[str, Any]],
) -> None:
    _, template = bastion_stack
    resources = template["Resources"]
    (group,) = [
        n for n, r in _of_type(resources, "AWS::EC2::SecurityGroup").items() if n.startswith("BastionSecurityGroup")
    ]
    assert "SecurityGroupIngress" not in resources[group]["Properties"]
    assert not [
        r
        for r in _of_type(resources, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
    ]
    egress = [
        r["Properties"]
        for r in _of_type(resources, "AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
    ]
    by_destination = {e["DestinationSecurityGroupId"]["Fn::GetAtt"][0]: e for e in egress}
    endpoints = {
        r["Properties"]["ServiceName"]["Fn::Join"][1][-1]: r["Properties"]["SecurityGroupIds"][0]["Fn::GetAtt"][0]
        for r in _of_type(resources, "AWS::EC2::VPCEndpoint").values()
        if r["Properties"]["VpcEndpointType"] == "Interface"
    }
    session_manager = {endpoints[service] for service in (".ssm", ".ssmmessages", ".ec2messages")}
    database = next(
        n
        for n, r in _of_type(resources, "AWS::EC2::SecurityGroup").items()
        if r["Properties"]["GroupDescription"].startswith("PostgreSQL:")
    )
    assert set(by_destination) == session_manager | {database}
    assert {by_destination[g]["FromPort"] for g in session_manager} == {443}
    assert by_destination[database]["FromPort"] == {
        "Fn::GetAtt": [next(iter(_of_type(resources, "AWS::RDS::DBInstance"))), "Endpoint.Port"]
    }


def test_given_the_bastion_then_the_stack_outputs_the_tunnel_command(bastion_stack: tuple[App, dict[str, Any]]) -> None:
    _, template = bastion_stack
    outputs = template["Outputs"]
    assert "BastionInstanceId" in outputs
    command = json.dumps(outputs["DatabaseTunnelCommand"]["Value"])
    assert "AWS-StartPortForwardingSessionToRemoteHost" in command
    assert "Endpoint.Address" in command


def _trail_selectors(resources: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    (trail,) = _of_type(resources, "AWS::CloudTrail::Trail").values()
    props = trail["Properties"]
    assert "EventSelectors" not in props and props["EnableLogFileValidation"] is True
    return {s["Name"]: s["FieldSelectors"] for s in props["AdvancedEventSelectors"]}


def test_given_prod_then_a_trail_records_data_events_of_the_artifacts_the_machines_and_promotion_commands(
    data_template: Template,
) -> None:
    selectors = _trail_selectors(data_template.to_json()["Resources"])
    types = {
        name: next(f["Equals"][0] for f in fields if f["Field"] == "resources.type")
        for name, fields in selectors.items()
    }
    assert types == {
        "artifacts objects": "AWS::S3::Object",
        "state machines": "AWS::StepFunctions::StateMachine",
        "promotion commands": "AWS::Lambda::Function",
    }
    machines = next(f["Equals"] for f in selectors["state machines"] if f["Field"] == "resources.ARN")
    assert len(machines) == len(catalog.STATE_MACHINES)
    assert all("stateMachine:pricepipe-" in json.dumps(arn) for arn in machines)
    assert all({"Field": "eventCategory", "Equals": ["Data"]} in fields for fields in selectors.values())


@pytest.mark.parametrize(
    ("context", "expected"),
    [({}, True), ({"pricepipe:stage": "dev"}, False), ({"pricepipe:auditTrail": "false"}, False)],
    ids=["prod", "dev", "turned-off"],
)
def test_given_the_stage_or_the_option_then_the_audit_trail_follows(context: dict[str, str], expected: bool) -> None:
    app = App(context={**project_context(), **context})
    assert DeployConfig.from_context(app.node).audit_trail is expected


def test_given_the_audit_trail_on_a_dev_stack_then_it_still_passes_cdk_nag() -> None:
    app = App(context={**project_context(), "pricepipe:stage": "dev", "pricepipe:auditTrail": "true"})
    stack = DataStack(app, "DevAudited", config=DeployConfig.from_context(app.node))
    assert len(_trail_selectors(Template.from_stack(stack).to_json()["Resources"])) == 3
    report = AwsSolutionsChecks().validate_scope(app)
    assert [v.rule_name for v in report.violations] == []
