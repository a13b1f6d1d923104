"""AgentInstruct-style instruction data as a Dagster pipeline."""
