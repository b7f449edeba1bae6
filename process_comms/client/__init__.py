"""The client SDK: the asyncio controller, its thread facade, futures and notebook/terminal display."""
