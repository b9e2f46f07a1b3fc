"""cluster.yaml (AWS) and cluster.onprem.yaml (machines you have) against Ray's own schema, and their safety
properties: token auth everywhere, nothing open to the world, IMDSv2, encrypted disks, an explicit image, no
upload of whatever directory `ray up` runs from. cluster.yaml is also bootstrapped by Ray's AWS code against
moto (AWS mocked in-process): with the one-time setup of docs/clusters.md it creates no security group or
role of its own, and the head's documented IAM policy covers every AWS call of Ray's autoscaler.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = ["cluster.yaml", "cluster.onprem.yaml"]
TOKEN_MOUNT = "~/.ray/auth_token"


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _ray_starts(config: dict) -> list[str]:
    return [
        command
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for command in config[key]
        if "ray start" in command
    ]


@pytest.mark.parametrize("name", FILES)
def test_validates_against_rays_autoscaler_schema(name):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _config(name)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # the file as written: no unknown keys, right types
    validate_config(prepare_config(copy.deepcopy(config)))  # as `ray up` sees it, merged with the provider's defaults


@pytest.mark.parametrize("name", FILES)
def test_comments_every_key_and_marks_what_to_edit_near_the_top(name):
    lines = (ROOT / name).read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*-?\s*[\w\"~./-]+:(\s|$)", line) and not line.lstrip().startswith("#"):
            previous = lines[number - 1].strip() if number else ""
            assert "#" in line or previous.startswith("#"), f"{name} line {number + 1} has no comment: {line}"
    start = next(number for number, line in enumerate(lines) if "EDIT HERE" in line)
    end = next(number for number, line in enumerate(lines) if number > start and line.startswith("# ====="))
    block = "\n".join(lines[start:end])
    assert start < 15 and "initialization_commands:" in block and "TLI_MODEL=" in block and "TLI_RESULTS=" in block
    if name == "cluster.onprem.yaml":  # the machines and the account are marked too
        assert all(f"{key}:" in block for key in ("head_ip", "worker_ips", "ssh_user", "ssh_private_key"))
    settings = _config(name)["initialization_commands"]
    assert len(settings) == 1 and settings[0].startswith("echo 'export TLI_MODEL=")  # one line to edit


@pytest.mark.parametrize("name", FILES)
def test_token_auth_on_every_node_and_for_every_driver(name):
    config = _config(name)
    assert config["file_mounts"][TOKEN_MOUNT] == TOKEN_MOUNT  # to the head; the head's autoscaler to each worker
    assert config.get("cluster_synced_files", []) == []  # (file_mounts reach workers by themselves)
    starts = _ray_starts(config)
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in command for command in starts)
    bashrc = next(command for command in config["setup_commands"] if ">> ~/.bashrc" in command)
    # every login shell (`ray exec`, `ray submit`, `ray down`'s `ray stop`): the env's ray, token mode, settings
    assert 'export PATH="$HOME/tli-venv/bin:$PATH" RAY_AUTH_MODE=token' in bashrc and ". ~/.tli_env" in bashrc
    assert "chmod 600 ~/.ray/auth_token" in config["setup_commands"]
    assert any('-e "$HOME/tli[nf4]"' in command for command in config["setup_commands"])


@pytest.mark.parametrize("name", FILES)
def test_nothing_open_to_the_world(name):
    text, config = (ROOT / name).read_text(), _config(name)
    assert "0.0.0.0" not in text and "::/0" not in text
    head_start = next(command for command in config["head_start_ray_commands"] if "ray start" in command)
    assert "--dashboard-host=127.0.0.1" in head_start  # the dashboard and job server: through `ray dashboard`'s tunnel


@pytest.mark.parametrize("name", FILES)
def test_syncs_only_named_paths_of_the_checkout(name, tmp_path, monkeypatch):
    """From the checkout's root `ray up` hashes (then uploads) the named paths; from anywhere else Ray's hash of
    the file mounts, which comes before any upload, stops with FileNotFoundError.
    """
    from ray.autoscaler._private.util import hash_runtime_conf

    config = _config(name)
    checkout = {remote: local for remote, local in config["file_mounts"].items() if remote != TOKEN_MOUNT}
    assert set(checkout) == {
        "~/tli/pyproject.toml",
        "~/tli/README.md",
        "~/tli/tli",
        "~/tli/ablations",
        "~/tli/constraints.txt",
    }
    for remote, local in checkout.items():
        assert local.startswith("./") and ".." not in local and local.strip("./") and (ROOT / local).exists()
        assert remote == "~/tli/" + local[2:]
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("token")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(ROOT)
    hash_runtime_conf(config["file_mounts"], None, config, generate_file_mounts_contents_hash=True)
    monkeypatch.chdir(home)  # e.g. `ray up ~/tli/cluster.yaml` from the home directory
    with pytest.raises(FileNotFoundError):
        hash_runtime_conf(config["file_mounts"], None, config, generate_file_mounts_contents_hash=True)


@pytest.mark.parametrize("name", FILES)
def test_every_node_installs_the_verified_versions_and_prepares_the_model_once(name):
    config = _config(name)
    commands = [
        c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands") for c in config.get(key, [])
    ]
    installs = [command for command in commands if "pip install" in command]
    assert installs and all("-c ~/tli/constraints.txt" in command for command in installs)
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert {"torch", "transformers", "peft", "bitsandbytes", "ray", "safetensors", "accelerate"} <= set(pins)
    assert f'"ray[default,tune]=={pins["ray"]}"' in installs[0] and "+" not in pins["torch"]  # no local build tag
    prepare = [command for command in commands if "python -m tli.hub" in command]
    if name == "cluster.yaml":  # the CPU head reads the config only; GPU workers fetch the weights
        assert [c for c in config["head_setup_commands"] if "tli.hub" in c][0].count("--config-only") == 1
        assert "--config-only" not in next(c for c in config["worker_setup_commands"] if "tli.hub" in c)
        disk = config["available_node_types"]["gpu_worker"]["node_config"]["BlockDeviceMappings"][0]["Ebs"]
        assert disk["VolumeType"] == "gp3" and disk["Throughput"] > 125  # gp3's default reads 16 GB in 2+ minutes
    else:
        assert len(prepare) == 1 and "--config-only" not in prepare[0]
    assert all("P=$(" in c and ") &&" in c and ">> ~/.tli_env" in c for c in prepare)  # a failure stops setup
    assert not any("huggingface" in remote for remote in config["file_mounts"])  # a hub token only if you add it


def test_aws_nodes_imdsv2_encrypted_explicit_image_and_only_the_head_has_a_role():
    config = _config("cluster.yaml")
    assert "security_group" not in config["provider"]  # no group of Ray's (it would open SSH to 0.0.0.0/0)
    assert config["cluster_name"] == "tli"  # the tag value the head's IAM policy names
    head_type = config["head_node_type"]
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert node["ImageId"].startswith(("ami-", "resolve:ssm:/aws/service/"))
        assert node["LaunchTemplate"] == {"LaunchTemplateName": "tli-ray", "Version": "$Latest"}
        assert "SecurityGroupIds" not in node and "NetworkInterfaces" not in node  # the template's group only
        assert node["MetadataOptions"]["HttpTokens"] == "required"
        assert node["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert all(disk["Ebs"]["Encrypted"] is True for disk in node["BlockDeviceMappings"])
        assert ("IamInstanceProfile" in node) == (name == head_type)
    head = config["available_node_types"][head_type]
    assert head["node_config"]["IamInstanceProfile"] == {"Name": "tli-ray-head"}
    assert head["resources"] == {"CPU": 0} and head["node_config"]["InstanceType"].startswith("m5")
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g5")
    assert any("pip install" in command and "boto3" in command for command in config["head_setup_commands"])


# --- Ray's AWS bootstrap against moto ------------------------------------------------------------


@pytest.fixture()
def aws(tmp_path, monkeypatch):
    """In-process AWS (moto) with fake credentials; Ray's cached boto3 clients dropped before and after."""
    moto = pytest.importorskip("moto")
    import boto3
    from ray.autoscaler._private.aws import utils

    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes its key pair to ~/.ssh

    def fresh():
        boto3.DEFAULT_SESSION = None
        utils.resource_cache.cache_clear()
        utils.client_cache.cache_clear()

    fresh()
    with moto.mock_aws():
        yield boto3
    fresh()


def _one_time_setup(boto3, template: bool = True) -> str:
    """What docs/clusters.md creates once: the group tli-ray (SSH from one address, all traffic within),
    the launch template tli-ray holding only that group, the head's role and instance profile. The group id.
    """
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName="tli-ray", Description="tli", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]},
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]},
        ],
    )
    if template:
        ec2.create_launch_template(LaunchTemplateName="tli-ray", LaunchTemplateData={"SecurityGroupIds": [group]})
    iam = boto3.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    iam.create_role(RoleName="tli-ray-head", AssumeRolePolicyDocument=json.dumps(trust))
    iam.create_instance_profile(InstanceProfileName="tli-ray-head")
    iam.add_role_to_instance_profile(InstanceProfileName="tli-ray-head", RoleName="tli-ray-head")
    return group


def _bootstrap(config: dict) -> dict:
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.util import prepare_config

    return bootstrap_aws(prepare_config(copy.deepcopy(config)))


def test_aws_bootstrap_uses_the_template_group_and_creates_no_group_or_role(aws):
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    group = _one_time_setup(aws)
    config = _bootstrap(_config("cluster.yaml"))
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"] == [group]
    ec2, iam = aws.client("ec2", region_name="us-east-1"), aws.client("iam")
    assert {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]} == {"default", "tli-ray"}
    assert [role["RoleName"] for role in iam.list_roles()["Roles"]] == ["tli-ray-head"]
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    head = {**config["available_node_types"]["head"]["node_config"], **config["head_node"]}
    provider.create_node(head, {"ray-node-kind": "head", "ray-user-node-type": "head"}, 1)  # as `ray up` launches it
    [instance] = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["IamInstanceProfile"]["Arn"].endswith("instance-profile/tli-ray-head")
    assert [volume["Encrypted"] for volume in ec2.describe_volumes()["Volumes"]] == [True]
    world = [
        (g["GroupName"], rule)
        for g in ec2.describe_security_groups()["SecurityGroups"]
        for rule in g["IpPermissions"]
        if any(r["CidrIp"] == "0.0.0.0/0" for r in rule.get("IpRanges", []))
    ]
    assert world == []


def test_aws_bootstrap_fails_closed_without_the_one_time_setup(aws):
    _one_time_setup(aws, template=False)
    with pytest.raises(Exception, match="(?i)launch ?template"):
        _bootstrap(_config("cluster.yaml"))
    groups = aws.client("ec2", region_name="us-east-1").describe_security_groups()["SecurityGroups"]
    assert {g["GroupName"] for g in groups} == {"default", "tli-ray"}  # Ray created no world-open group of its own


def _documented_head_policy() -> dict:
    docs = (ROOT / "docs" / "clusters.md").read_text()
    return json.loads(re.search(r"```json\n(.*?)```", docs, re.S).group(1).replace("BUCKET", "tli-results"))


def test_documented_head_policy_covers_rays_autoscaler_calls(aws, monkeypatch):
    """As the head (credentials of its role): bootstrap the config the head receives, launch a worker, tag it,
    terminate it. moto checks the actions of a policy, not its resources or conditions: those are dropped here.
    """
    from moto.core import set_initial_no_auth_action_count
    from ray.autoscaler._private.aws import utils
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    policy = _documented_head_policy()
    for statement in policy["Statement"]:
        statement.pop("Condition", None)
        statement["Resource"] = "*"

    @set_initial_no_auth_action_count(8)  # the setup below; every later call is checked against IAM
    def as_the_head():
        iam = aws.client("iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
        }
        iam.create_role(RoleName="tli-ray-head", AssumeRolePolicyDocument=json.dumps(trust))  # 1
        iam.put_role_policy(RoleName="tli-ray-head", PolicyName="tli-ray-head", PolicyDocument=json.dumps(policy))  # 2
        ec2 = aws.client("ec2", region_name="us-east-1")
        vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]  # 3
        group = ec2.create_security_group(GroupName="tli-ray", Description="tli", VpcId=vpc)["GroupId"]  # 4
        ec2.create_launch_template(LaunchTemplateName="tli-ray", LaunchTemplateData={"SecurityGroupIds": [group]})  # 5
        iam.create_user(UserName="launcher")  # 6
        iam.put_user_policy(
            UserName="launcher",
            PolicyName="assume",
            PolicyDocument=json.dumps(
                {  # 7
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="launcher")["AccessKey"]  # 8
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        aws.DEFAULT_SESSION = None
        role = aws.client("sts").assume_role(
            RoleArn="arn:aws:iam::123456789012:role/tli-ray-head", RoleSessionName="head"
        )["Credentials"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", role["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", role["SecretAccessKey"])
        monkeypatch.setenv("AWS_SESSION_TOKEN", role["SessionToken"])
        aws.DEFAULT_SESSION = None
        utils.resource_cache.cache_clear()
        utils.client_cache.cache_clear()
        config = _config("cluster.yaml")  # as the head gets it: with `ray up`'s key pair and key
        config["auth"]["ssh_private_key"] = "~/ray_bootstrap_key.pem"
        for node_type in config["available_node_types"].values():
            node_type["node_config"]["KeyName"] = "ray-autoscaler_us-east-1"
        config = _bootstrap(config)
        provider = AWSNodeProvider(config["provider"], config["cluster_name"])
        provider.create_node(
            config["available_node_types"]["gpu_worker"]["node_config"],
            {"ray-node-kind": "worker", "ray-user-node-type": "gpu_worker"},
            1,
        )
        [worker] = provider.non_terminated_nodes({})
        provider.set_node_tags(worker, {"ray-node-status": "up-to-date"})
        provider.terminate_nodes([worker])

    as_the_head()
