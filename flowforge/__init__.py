"""FlowForge: DAG orchestration with warm Ray agents for light tasks and fresh Pods for heavy ones."""

__version__ = "0.1.0"
