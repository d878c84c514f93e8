//! POSIX `sh` scripts written into `bin/` of a simulated pack.
//!
//! They follow the contract of the real scripts (research §2 and §7): argument forms, the
//! JAVA_HOME checks and messages, `start`/`stop`/`restart`/`version`, the 121 restart loop,
//! and the profile optimizer's side effects, log lines and quirks. The text is our own.

use super::layout::{PackKind, PackLayout, Release};

const START_SCRIPT: &str = r#"#!/bin/sh
# ----------------------------------------------------------------------------
#  @PRODUCT@ @VERSION@ start script (simulated distribution for apimctl tests)
#
#  Environment
#    CARBON_HOME   installation directory, defaults to the parent of bin/
#    JAVA_HOME     the JDK to run the server with (required)
#    JAVA_OPTS     extra JVM options
#    JVM_MEM_OPTS  heap options, default -Xms256m -Xmx1024m
#
#  Usage: @SCRIPT@ [start|stop|restart|version|debug <port>|test|optimize] [-Dkey=value ...]
#  Without a command the server runs in the foreground.
# ----------------------------------------------------------------------------

# follow symbolic links to find the real bin/ directory
PRG="$0"
while [ -h "$PRG" ]; do
  ls=$(ls -ld "$PRG")
  link=$(expr "$ls" : '.*-> \(.*\)$')
  if expr "$link" : '.*/.*' > /dev/null; then
    PRG="$link"
  else
    PRG=$(dirname "$PRG")/"$link"
  fi
done
PRGDIR=$(dirname "$PRG")

[ -z "$CARBON_HOME" ] && CARBON_HOME=$(cd "$PRGDIR/.." && pwd)

if [ -z "$JAVACMD" ]; then
  if [ -n "$JAVA_HOME" ]; then
    JAVACMD="$JAVA_HOME/bin/java"
  else
    JAVACMD=java
  fi
fi

if [ ! -x "$JAVACMD" ]; then
  echo "Error: JAVA_HOME is not defined correctly."
  echo " CARBON cannot execute $JAVACMD"
  exit 1
fi

if [ -z "$JAVA_HOME" ]; then
  echo "You must set the JAVA_HOME variable before running CARBON."
  exit 1
fi

is_running() {
  if command -v ps > /dev/null 2>&1; then
    ps -p "$1" > /dev/null 2>&1
  else
    kill -0 "$1" > /dev/null 2>&1
  fi
}

# ----- read the command line ---------------------------------------------------
args=""
for c in "$@"; do
  if [ "$c" = "--debug" ] || [ "$c" = "-debug" ] || [ "$c" = "debug" ]; then
    CMD="--debug"
    continue
  elif [ "$CMD" = "--debug" ] && [ -z "$PORT" ]; then
    PORT=$c
  elif [ "$c" = "--stop" ] || [ "$c" = "-stop" ] || [ "$c" = "stop" ]; then
    CMD="stop"
  elif [ "$c" = "--start" ] || [ "$c" = "-start" ] || [ "$c" = "start" ]; then
    CMD="start"
  elif [ "$c" = "--restart" ] || [ "$c" = "-restart" ] || [ "$c" = "restart" ]; then
    CMD="restart"
  elif [ "$c" = "--version" ] || [ "$c" = "-version" ] || [ "$c" = "version" ]; then
    CMD="version"
  elif [ "$c" = "--test" ] || [ "$c" = "-test" ] || [ "$c" = "test" ]; then
    CMD="test"
  elif [ "$c" = "--optimize" ] || [ "$c" = "-optimize" ] || [ "$c" = "optimize" ]; then
    OPTIMIZE="true"
  elif [ "$c" = "--skipConfigOptimization" ] || [ "$c" = "-skipConfigOptimization" ] || [ "$c" = "skipConfigOptimization" ]; then
    SKIP_CONFIG_OPTIMIZATION="--skipConfigOptimization"
  else
    case "$c" in
      -Dprofile=*) PROFILE="$c" ;;
    esac
    args="$args $c"
  fi
done

if [ "$CMD" = "--debug" ]; then
  if [ -z "$PORT" ]; then
    echo " Please specify the debug port after the --debug option"
    exit 1
  fi
  if [ -n "$JAVA_OPTS" ]; then
    echo "Warning !!!. User specified JAVA_OPTS will be ignored, once you give the --debug option."
  fi
  CMD="RUN"
  JAVA_OPTS="-Xdebug -Xnoagent -Djava.compiler=NONE -Xrunjdwp:transport=dt_socket,server=y,suspend=y,address=$PORT"
  echo "Please start the remote debugging client to continue..."
fi

@OPTIMIZE@
if [ "$CMD" = "start" ]; then
  if [ -e "$CARBON_HOME/wso2carbon.pid" ]; then
    PID=$(cat "$CARBON_HOME/wso2carbon.pid")
    if [ -n "$PID" ] && is_running "$PID"; then
      echo "Process is already running"
      exit 0
    fi
  fi
  export CARBON_HOME
  # the child runs this script again without "start"; its output is discarded
  nohup sh "$CARBON_HOME/bin/@SCRIPT@" $args > /dev/null 2>&1 &
  exit 0
elif [ "$CMD" = "stop" ]; then
  export CARBON_HOME
  kill -TERM $(cat "$CARBON_HOME/wso2carbon.pid")
  exit 0
elif [ "$CMD" = "restart" ]; then
  export CARBON_HOME
  PID=$(cat "$CARBON_HOME/wso2carbon.pid")
  kill -TERM "$PID"
  while is_running "$PID"; do
    sleep 1
  done
  nohup sh "$CARBON_HOME/bin/@SCRIPT@" $args > /dev/null 2>&1 &
  exit 0
elif [ "$CMD" = "version" ]; then
  cat "$CARBON_HOME/bin/version.txt"
  cat "$CARBON_HOME/bin/wso2carbon-version.txt"
  exit 0
fi

# ----- JDK version check (warns only) -----------------------------------------
java_version=$("$JAVACMD" -version 2>&1 | awk -F '"' '/version/ {print $2}')
java_major=$(echo "$java_version" | awk -F. '{ if ($1 == 1) print $2; else print $1 }')
case "$java_major" in
  ''|*[!0-9]*) ;;
  *)
    if [ "$java_major" -lt @JDK_MIN@ ] || [ "$java_major" -gt @JDK_MAX@ ]; then
      echo " Starting WSO2 Carbon (in unsupported JDK)"
      echo " [ERROR] CARBON is supported only between JDK @JDK_MIN_LABEL@ and JDK @JDK_MAX@"
    fi
    ;;
esac

CARBON_XBOOTCLASSPATH=""
for f in "$CARBON_HOME"/lib/xboot/*.jar; do
  [ -e "$f" ] && CARBON_XBOOTCLASSPATH="$CARBON_XBOOTCLASSPATH:$f"
done
CARBON_CLASSPATH=""
for f in "$CARBON_HOME"/bin/*.jar; do
  [ -e "$f" ] && CARBON_CLASSPATH="$CARBON_CLASSPATH:$f"
done

echo JAVA_HOME environment variable is set to $JAVA_HOME
echo CARBON_HOME environment variable is set to $CARBON_HOME

cd "$CARBON_HOME"

TMP_DIR="$CARBON_HOME/tmp"
if [ -d "$TMP_DIR" ]; then
  rm -rf "$TMP_DIR"/*
fi

START_EXIT_STATUS=121
status=$START_EXIT_STATUS

if [ -z "$JVM_MEM_OPTS" ]; then
  JVM_MEM_OPTS="-Xms256m -Xmx1024m"
fi
echo "Using Java memory options: $JVM_MEM_OPTS"

while [ "$status" = "$START_EXIT_STATUS" ]; do
  "$JAVACMD" \
    -Xbootclasspath/a:"$CARBON_XBOOTCLASSPATH" \
    $JVM_MEM_OPTS \
    -XX:+HeapDumpOnOutOfMemoryError \
    -XX:HeapDumpPath="$CARBON_HOME/repository/logs/heap-dump.hprof" \
    $JAVA_OPTS \
    -classpath "$CARBON_CLASSPATH" \
    -Djava.io.tmpdir="$CARBON_HOME/tmp" \
    -Dcatalina.base="$CARBON_HOME/lib/tomcat" \
    -Dwso2.server.standalone=true \
    -Dcarbon.registry.root=/ \
    -Djava.command="$JAVACMD" \
    -Dcarbon.home="$CARBON_HOME" \
    -Dcarbon.config.dir.path="$CARBON_HOME/repository/conf" \
    -Dcarbon.new.config.dir.path="$CARBON_HOME/repository/resources/conf" \
    -Dcomponents.repo="$CARBON_HOME/repository/components/plugins" \
    -Dlogger.server.name="@LOGGER@" \
    -Djava.util.logging.manager=org.apache.juli.ClassLoaderLogManager \
    -Dfile.encoding=UTF8 \
    -Djava.net.preferIPv4Stack=true \
    org.wso2.carbon.bootstrap.Bootstrap $args
  status=$?
  if [ "$CMD" = "test" ]; then
    break
  fi
done
"#;

const OPTIMIZE_BLOCK: &str = r#"if [ "$OPTIMIZE" = "true" ]; then
  sh "$CARBON_HOME/bin/profileSetup.sh" $PROFILE $SKIP_CONFIG_OPTIMIZATION
fi
"#;

/// The start script text for `script` (one of the layout's script names).
pub fn start_script(layout: &PackLayout, script: &str) -> String {
    let optimize = if layout.profile_setup {
        OPTIMIZE_BLOCK
    } else {
        ""
    };
    let (jdk_min, jdk_max) = layout.jdk_range;
    let jdk_min_label = if jdk_min < 9 {
        format!("1.{jdk_min}")
    } else {
        jdk_min.to_string()
    };
    START_SCRIPT
        .replace("@OPTIMIZE@", optimize)
        .replace("@SCRIPT@", script)
        .replace("@PRODUCT@", layout.product_name)
        .replace("@VERSION@", &layout.version)
        .replace("@JDK_MIN_LABEL@", &jdk_min_label)
        .replace("@JDK_MIN@", &jdk_min.to_string())
        .replace("@JDK_MAX@", &jdk_max.to_string())
        .replace("@LOGGER@", &layout.top_dir)
}

const PROFILE_SETUP_HEAD: &str = r#"#!/bin/sh
# ----------------------------------------------------------------------------
#  Profile optimizer for @PRODUCT@ @VERSION@ (simulated distribution)
#
#  Usage: sh profileSetup.sh -Dprofile=<profile> [--skipConfigOptimization]
#  The profile must be the first argument.
# ----------------------------------------------------------------------------

cd "$(dirname "$0")"

pathToDeploymentTemplates=../repository/resources/conf/deployment-templates
pathToDeploymentConfiguration=../repository/conf/deployment.toml
pathToDeploymentConfigurationBackup=../repository/conf/deployment.toml.backup
pathToWebapps=../repository/deployment/server/webapps
pathToJaggeryapps=../repository/deployment/server/jaggeryapps
pathToSynapseConfigs=../repository/deployment/server/synapse-configs/default
pathToInboundEndpoints=../repository/deployment/server/synapse-configs/default/inbound-endpoints
pathToAxis2Configs=../repository/conf/axis2
pathToTemplates=../repository/resources/conf/templates
pathToAxis2Templates=../repository/resources/conf/templates/repository/conf/axis2
pathToRegistryTemplates=../repository/resources/conf/templates/repository/conf
pathToWebXmlTemplates=../repository/resources/conf/templates/repository/conf/tomcat/carbon/WEB-INF
pathToInboundTemplates=../repository/resources/conf/templates/repository/deployment/server/synapse-configs/default/inbound-endpoints
pathToWebappTemplates=../repository/resources/conf/templates/repository/deployment/server/webapps

timestamp() {
  date '+%Y-%m-%d %H:%M:%S'
}

info() {
  echo "[$(timestamp)] INFO - $1"
}

skipConfigOptimization=false
for arg in "$@"; do
  case "$arg" in
    --skipConfigOptimization|-skipConfigOptimization|skipConfigOptimization)
      skipConfigOptimization=true
      ;;
  esac
done

# replaceDeploymentConfiguration <profile>: keep the current toml as a backup, use the template
replaceDeploymentConfiguration() {
  if [ "$skipConfigOptimization" = "true" ]; then
    info "Skipped the replacement of $pathToDeploymentConfiguration"
    return
  fi
  if [ -f "$pathToDeploymentConfiguration" ]; then
    mv "$pathToDeploymentConfiguration" "$pathToDeploymentConfigurationBackup"
    info "Renamed the existing $pathToDeploymentConfiguration file as deployment.toml.backup"
  fi
  if [ -f "$pathToDeploymentTemplates/$1.toml" ]; then
    cp "$pathToDeploymentTemplates/$1.toml" "$pathToDeploymentConfiguration"
    info "Copied the $pathToDeploymentTemplates/$1.toml file as $pathToDeploymentConfiguration"
  fi
}

# replaceTemplate <dir> <target> <replacement>: swap a config template for the profile's one
replaceTemplate() {
  if [ -f "$1/$3" ]; then
    if [ -f "$1/$2" ]; then
      mv "$1/$2" "$1/$2.backup"
      info "Renamed the existing $1/$2 file as $2.backup"
    fi
    @SWAP@ "$1/$3" "$1/$2"
    info "@SWAP_WORD@ the $1/$3 file as $2"
  fi
}

# removeFile <dir> <name>
removeFile() {
  if [ -e "$1/$2" ]; then
    rm -rf "$1/$2"
    info "Removed the $2 file from $1"
  fi
}

# removeWebapps <glob>...: delete matching wars and their exploded directories
removeWebapps() {
  for pattern in "$@"; do
    for entry in "$pathToWebapps"/$pattern; do
      [ -e "$entry" ] || continue
      name=$(basename "$entry")
      rm -rf "$entry"
      info "Removed the $name file from $pathToWebapps"
      base=${name%.war}
      if [ -d "$pathToWebapps/$base" ]; then
        rm -rf "$pathToWebapps/$base"
        info "Removed the $base directory from $pathToWebapps"
      fi
    done
  done
}

# keepOnlyWebapps <glob>...: delete every webapp that matches none of the globs; an exploded
# directory survives with its war
keepOnlyWebapps() {
  for entry in "$pathToWebapps"/*; do
    [ -e "$entry" ] || continue
    name=$(basename "$entry")
    keep=false
    for pattern in "$@"; do
      case "$name" in
        $pattern) keep=true ;;
      esac
      case "$name.war" in
        $pattern) keep=true ;;
      esac
    done
    if [ "$keep" = "false" ]; then
      rm -rf "$entry"
      info "Removed the $name file from $pathToWebapps"
    fi
  done
}

removeJaggeryApps() {
  for entry in "$pathToJaggeryapps"/*; do
    [ -e "$entry" ] || continue
    rm -rf "$entry"
    info "Removed the $(basename "$entry") directory from $pathToJaggeryapps"
  done
}

removeWebSocketInboundEndpoints() {
  removeFile "$pathToInboundEndpoints" WebSocketInboundEndpoint.xml
  removeFile "$pathToInboundEndpoints" SecureWebSocketInboundEndpoint.xml
  removeFile "$pathToInboundTemplates" WebSocketInboundEndpoint.xml.j2
  removeFile "$pathToInboundTemplates" SecureWebSocketInboundEndpoint.xml.j2
}

removeSynapseConfigs() {
  for entry in "$pathToSynapseConfigs"/*; do
    [ -e "$entry" ] || continue
    name=$(basename "$entry")
    if [ "$name" != "synapse.xml" ]; then
      rm -rf "$entry"
      info "Removed the $name file from $pathToSynapseConfigs"
    fi
  done
}

case $1 in
"#;

/// The `profileSetup.sh` text for a layout that has one.
pub fn profile_setup(layout: &PackLayout) -> String {
    let r = layout.release;
    // From 4.1 a template swap copies the replacement (so a second run loses the original
    // backup); before that it moves it (so a second run finds nothing to swap).
    let (swap, swap_word) = if r >= Release::V4_1 {
        ("cp", "Copied")
    } else {
        ("mv", "Renamed")
    };
    let mut s = PROFILE_SETUP_HEAD
        .replace("@PRODUCT@", layout.product_name)
        .replace("@VERSION@", &layout.version)
        .replace("@SWAP_WORD@", swap_word)
        .replace("@SWAP@", swap);
    let old_portals = r <= Release::V4_1;
    for profile in &layout.profiles {
        let (title, body) = profile_body(layout, profile, old_portals);
        s.push_str(&format!(
            "  -Dprofile={profile})\n    echo \"Starting to optimize API Manager for the {title} profile\"\n{body}    ;;\n"
        ));
    }
    s.push_str(
        "  *)\n    echo \"Profile is not specified properly, please try again\"\n    exit\n    ;;\nesac\n\ninfo \"Finished the optimizations\"\n",
    );
    s
}

fn lines(steps: &[&str]) -> String {
    steps.iter().map(|l| format!("    {l}\n")).collect()
}

fn profile_body(layout: &PackLayout, profile: &str, old_portals: bool) -> (String, String) {
    let r = layout.release;
    let acp = layout.kind == PackKind::ApiControlPlane;
    let mut steps: Vec<String> = vec![format!("replaceDeploymentConfiguration {profile}")];
    let title;
    match profile {
        "gateway-worker" => {
            title = "Gateway worker".to_string();
            steps.push(
                "replaceTemplate \"$pathToWebXmlTemplates\" web.xml.j2 web_TM_GW.xml.j2".into(),
            );
            steps.push(
                "removeFile \"$pathToWebappTemplates/authenticationendpoint/WEB-INF\" web.xml.j2"
                    .into(),
            );
            steps.push(
                "removeFile \"$pathToWebappTemplates/accountrecoveryendpoint/WEB-INF\" web.xml.j2"
                    .into(),
            );
            steps.push(
                "keepOnlyWebapps 'am#sample#pizzashack#v*.war' 'api#am#gateway#v2.war'".into(),
            );
            if old_portals {
                steps.push("removeJaggeryApps".into());
            }
        }
        "traffic-manager" => {
            title = "Traffic Manager".to_string();
            steps.push(
                "replaceTemplate \"$pathToAxis2Templates\" axis2.xml.j2 axis2_TM.xml.j2".into(),
            );
            steps.push(
                "replaceTemplate \"$pathToRegistryTemplates\" registry.xml.j2 registry_TM.xml.j2"
                    .into(),
            );
            steps.push(
                "replaceTemplate \"$pathToWebXmlTemplates\" web.xml.j2 web_TM_GW.xml.j2".into(),
            );
            steps.push("removeWebSocketInboundEndpoints".into());
            steps.push("removeSynapseConfigs".into());
            if r == Release::V3_2 {
                steps.push("keepOnlyWebapps".into());
            } else {
                steps.push("keepOnlyWebapps 'internal#data#v*.war'".into());
            }
            if old_portals {
                steps.push("removeJaggeryApps".into());
            }
        }
        "control-plane" => {
            title = "Control Plane".to_string();
            steps.push("removeWebSocketInboundEndpoints".into());
            steps.push("removeSynapseConfigs".into());
            if r > Release::V4_0 {
                steps.push(
                    "replaceTemplate \"$pathToAxis2Templates\" axis2.xml.j2 axis2_ControlPlane.xml.j2"
                        .into(),
                );
                steps.push("replaceTemplate \"$pathToAxis2Templates\" tenant-axis2.xml.j2 tenant-axis2_ControlPlane.xml.j2".into());
                steps.push("removeWebapps 'api#am#gateway#v2.war'".into());
            }
        }
        "api-publisher" | "api-publisher-deprecated" => {
            title = "API Publisher".to_string();
            steps.push("removeWebSocketInboundEndpoints".into());
            steps.push("removeSynapseConfigs".into());
            steps.push("removeWebapps 'api#am#store#v*.war' 'api#am#devportal.war' 'am#sample#*.war' 'api#am#gateway#v2.war'".into());
            steps.push("removeFile \"$pathToJaggeryapps\" devportal".into());
        }
        "api-devportal" | "api-devportal-deprecated" => {
            title = "Developer Portal".to_string();
            steps.push("removeWebSocketInboundEndpoints".into());
            steps.push("removeSynapseConfigs".into());
            steps.push("removeWebapps 'api#am#publisher*.war' 'api#am#admin*.war' 'am#sample#*.war' 'api#am#gateway#v2.war'".into());
            steps.push("removeFile \"$pathToJaggeryapps\" publisher".into());
            steps.push("removeFile \"$pathToJaggeryapps\" admin".into());
        }
        _ => {
            // every key manager flavour
            title = "Key Manager".to_string();
            steps.push("removeFile \"$pathToAxis2Configs\" axis2_blocking_client.xml".into());
            steps.push("removeFile \"$pathToAxis2Templates\" axis2_blocking_client.xml.j2".into());
            steps.push(
                "replaceTemplate \"$pathToAxis2Templates\" axis2.xml.j2 axis2_KM.xml.j2".into(),
            );
            steps.push(
                "replaceTemplate \"$pathToAxis2Templates\" tenant-axis2.xml.j2 tenant-axis2_KM.xml.j2"
                    .into(),
            );
            steps.push("removeWebSocketInboundEndpoints".into());
            if !acp {
                steps.push("removeSynapseConfigs".into());
            }
            let mut keep = vec![
                "'authenticationendpoint'",
                "'accountrecoveryendpoint'",
                "'oauth2.war'",
                "'api#identity#consent-mgt#v*.war'",
                "'api#identity#recovery#v*.war'",
                "'api#identity#user#v*.war'",
                "'api#identity#oauth2#dcr#v*.war'",
                "'api#identity#oauth2#v*.war'",
                "'keymanager-operations.war'",
            ];
            if r == Release::V3_2 {
                keep.extend(["'client-registration#v*.war'", "'throttle#data#v*.war'"]);
            }
            steps.push(format!("keepOnlyWebapps {}", keep.join(" ")));
            if old_portals {
                steps.push("removeJaggeryApps".into());
            }
        }
    }
    let refs: Vec<&str> = steps.iter().map(String::as_str).collect();
    (title, lines(&refs))
}

/// The cipher tool's jar under `lib/` (the script puts `lib/org.wso2.ciphertool*.jar` on the
/// class path; without it the JVM cannot find the tool's main class).
pub const CIPHERTOOL_JAR: &str = "org.wso2.ciphertool-1.1.11.jar";

const CIPHERTOOL_SCRIPT: &str = r#"#!/bin/sh
# ----------------------------------------------------------------------------
#  Secure vault cipher tool for @PRODUCT@ @VERSION@ (simulated distribution)
#
#  Usage: ciphertool.sh [-Dconfigure | -Dchange] [-Dpassword=<keystore password>]
#                       [-Dorg.wso2.CipherTransformation=<transformation>] [-help]
#  -Dconfigure encrypts the [secrets] of repository/conf/deployment.toml in place and writes
#  repository/conf/security/secret-conf.properties.
# ----------------------------------------------------------------------------

if [ -z "$JAVA_HOME" ]; then
  echo "You must set the JAVA_HOME variable before running CARBON."
  exit 1
fi

PRG="$0"
while [ -h "$PRG" ]; do
  ls=$(ls -ld "$PRG")
  link=$(expr "$ls" : '.*-> \(.*\)$')
  if expr "$link" : '.*/.*' > /dev/null; then
    PRG="$link"
  else
    PRG=$(dirname "$PRG")/"$link"
  fi
done
PRGDIR=$(dirname "$PRG")
[ -z "$CARBON_HOME" ] && CARBON_HOME=$(cd "$PRGDIR/.." && pwd)

CARBON_CLASSPATH=""
for f in "$CARBON_HOME"/lib/org.wso2.ciphertool*.jar; do
  [ -e "$f" ] && CARBON_CLASSPATH="$CARBON_CLASSPATH:$f"
done
for h in "$CARBON_HOME"/repository/components/plugins/*.jar; do
  [ -e "$h" ] && CARBON_CLASSPATH="$CARBON_CLASSPATH:$h"
done

exec "$JAVA_HOME/bin/java" $JAVA_OPTS \
  -Dcarbon.home="$CARBON_HOME" \
  -Dcarbon.config.dir.path="$CARBON_HOME/repository/conf" \
  -Dorg.wso2.CipherTransformation="RSA/ECB/OAEPwithSHA1andMGF1Padding" \
  -classpath "$CARBON_CLASSPATH" \
  org.wso2.ciphertool.CipherTool "$@"
"#;

/// `bin/ciphertool.sh`: runs the cipher tool with the transformation the product's own
/// runtime uses (see `docs/secure-vault.md`).
pub fn ciphertool_script(layout: &PackLayout) -> String {
    CIPHERTOOL_SCRIPT
        .replace("@PRODUCT@", layout.product_name)
        .replace("@VERSION@", &layout.version)
}

/// A no-op stand-in for helper scripts whose behaviour no agent depends on.
pub fn noop_script(what: &str) -> String {
    format!("#!/bin/sh\n# {what} (simulated distribution: does nothing)\nexit 0\n")
}
