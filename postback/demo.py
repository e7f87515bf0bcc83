"""``postback demo``: seed a demo account, spot, goals and subscribers; print curl lines."""

from __future__ import annotations

import secrets

from postback import commands
from postback.backend import describe, open_store
from postback.config import Config
from postback.directory import Directory


async def run_demo(config: Config) -> str:
    """Seed the demo data (a new account each run) and print what to paste; returns the text."""
    async with await open_store(config) as store:
        directory = Directory(store)
        await directory.load()
        account, api_key = await commands.create_account(directory, "Demo account")
        suffix = secrets.token_hex(3)
        spot = await commands.create_spot(directory, account, "Demo bot", f"demo-{suffix}")
        await commands.define_goal(
            directory, account, "level10", {"level": 10}, "You reached level 10!"
        )
        await commands.define_goal(directory, account, "kyc_submit", None, None)
        clickid = f"DEMO-{suffix}"
        first = await commands.create_subscriber(directory, spot, "7788", clickid)
        await commands.create_subscriber(directory, spot, "7275455017", None)

    base = f"http://{config.host}:{config.port}"
    auth = f"-H 'Authorization: Bearer {api_key}'"
    text = f"""
Demo data in {describe(config)}:
  account {account.id} (API key {api_key})
  spot {spot.id} "Demo bot", token {spot.token}
  subscribers: {first.id} with clickid {clickid} (user 7788), and user 7275455017 without clickid
  custom goals: level10 (sets profile level=10), kyc_submit

Try (with the server running):
  curl '{base}/postback/?clickid={clickid}&goal=reg'
  curl '{base}/postback/?clickid={clickid}&goal=dep&sum=100.50&playerid=P-1'
  curl '{base}/postback/?clickid={clickid}&goal=dep&sum=100.50'      # 409 deposit_already
  curl '{base}/postback/?clickid={clickid}&goal=redep&sum=0.1'
  curl '{base}/postback/?clickid={clickid}&goal=level10&sum=1'
  curl '{base}/postback/?user_id=7275455017&spot={spot.token}&goal=reg'
  curl '{base}/spot/postback/chat/?user_id=7275455017&spot={spot.token}'
  curl {auth} '{base}/api/v1/subscribers/{first.id}'
  curl {auth} '{base}/api/v1/subscribers/{first.id}/events'
  curl {auth} '{base}/api/v1/postbacks?clickid={clickid}'
"""
    print(text)
    return text
