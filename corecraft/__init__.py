"""CoreCraft: a simulated PC-components retailer's customer-support organization for agent RL.

Never imports JAX: any RL stack can use the environment over MCP.
"""
