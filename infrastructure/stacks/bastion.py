"""An optional, SSM-only host for reaching PostgreSQL from a laptop: how people browse MLflow in AWS.

No MLflow server runs in AWS. Tracking and registry live in the pipeline's PostgreSQL (schema
``mlflow``), artifacts in the artifacts bucket under ``mlflow/``: the MLflow UI is only needed when a
person looks, so it runs on that person's machine, against the real store, for as long as they look.

Recommended way (deploy with ``-c pricepipe:bastion=true``; the data stack then outputs
``DatabaseTunnelCommand`` and ``BastionInstanceId``)::

    # 1. a tunnel: localhost:15432 -> PostgreSQL, through Session Manager (no SSH, no open port)
    aws ssm start-session --target <BastionInstanceId> \\
        --document-name AWS-StartPortForwardingSessionToRemoteHost \\
        --parameters host=<database address>,portNumber=5432,localPortNumber=15432
    # 2. the UI: the password comes from the DatabaseSecretArn secret, URL-encoded; the server
    #    requires TLS (rds.force_ssl) and the tunnel's host name is localhost: sslmode=require
    STORE='postgresql+psycopg://pricepipe:<password>@localhost:15432/pricepipe'
    mlflow ui --port 5000 --backend-store-uri "$STORE?sslmode=require&options=-csearch_path%3Dmlflow"

Run the MLflow version the training image pins (training_jobs/requirements.txt; the UI needs the
full ``mlflow`` package, not ``mlflow-skinny``): the store's schema is that version's, and another
release would refuse it or ask for ``mlflow db upgrade``. The UI fetches artifacts (plots, models)
from S3 with the person's own credentials. What that person needs, and nothing else:
``ssm:StartSession`` on the bastion and on the document ``AWS-StartPortForwardingSessionToRemoteHost``,
``secretsmanager:GetSecretValue`` on the database secret, and ``s3:ListBucket``/``s3:GetObject``
under ``mlflow/`` in the artifacts bucket.

Why not a hosted UI: an always-on Fargate service behind an authenticated load balancer costs a
load balancer, a public entry point, a certificate and an identity provider for something used now
and then; a tunnel that exists only while someone looks has no public surface at all.

The host: the smallest Graviton instance with Amazon Linux 2023 (SSM Agent preinstalled), IMDSv2
only, an encrypted root volume, no key pair and no inbound rule. Its own security group reaches only
PostgreSQL (5432) and the three Session Manager endpoints (443). The ``ssmmessages`` and
``ec2messages`` endpoints are created with it, so a deployment without the bastion pays for neither;
the ``ssm`` endpoint is the data stack's, which the promotion steps use anyway (a VPC can hold only
one endpoint with private DNS per service).
"""

from __future__ import annotations

from aws_cdk import CfnOutput
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_rds as rds
from constructs import Construct

from infrastructure import nag

BASTION_INSTANCE_TYPE = "t4g.nano"
LOCAL_PORT = 15432
# Session Manager from subnets without a route out: the agent registers (ssm, the data stack's
# endpoint), opens its data channel (ssmmessages) and, with agents older than 3.3.40, polls for
# messages (ec2messages).
SESSION_MANAGER_ENDPOINTS = {
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
}


class DatabaseBastion(Construct):
    """An SSM-managed instance that can open TCP to PostgreSQL and nothing else."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        database: rds.DatabaseInstance,
        ssm_endpoint: ec2.InterfaceVpcEndpoint,
    ) -> None:
        super().__init__(scope, construct_id)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Database bastion: no inbound; out to PostgreSQL and the Session Manager endpoints only",
            allow_all_outbound=False,
        )
        for name, service in SESSION_MANAGER_ENDPOINTS.items():
            endpoint = ec2.InterfaceVpcEndpoint(
                self, name, vpc=vpc, service=service, subnets=subnets, private_dns_enabled=True, open=False
            )
            endpoint.connections.allow_default_port_from(self.security_group, "Session Manager from the bastion")
        ssm_endpoint.connections.allow_default_port_from(self.security_group, "Session Manager from the bastion")
        database.connections.allow_default_port_from(self.security_group, "Port forwarding from the bastion")

        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Database bastion: Session Manager agent only",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        nag.acknowledge(
            role,
            "IAM4",
            "AmazonSSMManagedInstanceCore is the policy AWS maintains for the SSM Agent (registration, "
            "session channels); the role holds nothing else, so the host can read no data, secret or bucket.",
            finding="Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore",
        )
        self.instance = ec2.Instance(
            self,
            "Instance",
            vpc=vpc,
            vpc_subnets=subnets,
            instance_type=ec2.InstanceType(BASTION_INSTANCE_TYPE),
            machine_image=ec2.MachineImage.latest_amazon_linux2023(cpu_type=ec2.AmazonLinuxCpuType.ARM_64),
            security_group=self.security_group,
            role=role,
            require_imdsv2=True,
            associate_public_ip_address=False,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(8, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
                )
            ],
        )
        nag.acknowledge(
            self.instance,
            "EC28",
            "The bastion only relays Session Manager port-forwarding; per-minute detailed monitoring would "
            "add cost without a metric anyone acts on (its status checks stay on).",
        )
        nag.acknowledge(
            self.instance,
            "EC29",
            "The bastion is stateless and exists only while pricepipe:bastion=true; termination protection "
            "would block turning the flag off, and a replacement instance is identical.",
        )

        CfnOutput(scope, "BastionInstanceId", value=self.instance.instance_id)
        CfnOutput(
            scope,
            "DatabaseTunnelCommand",
            description=f"Forwards localhost:{LOCAL_PORT} to PostgreSQL (then run mlflow ui, see bastion.py)",
            value=(
                f"aws ssm start-session --target {self.instance.instance_id}"
                " --document-name AWS-StartPortForwardingSessionToRemoteHost"
                f" --parameters host={database.db_instance_endpoint_address},"
                f"portNumber={database.db_instance_endpoint_port},localPortNumber={LOCAL_PORT}"
            ),
        )
