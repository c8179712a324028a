"""Policy texts shared by the policy tests: the example of issue 16, and one with every form (to mutate)."""

ISSUE_EXAMPLE = """{
  "groups":    {"group:ops": ["ops1", "ops2"]},
  "tagOwners": {"tag:db": ["root"]},            // who may give an endpoint this tag (endpoints get tags from labels)
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:tunnel/tcp/pg", "build-01:terminal"]},
    {"action": "accept", "src": ["*"],         "dst": ["*:files/shared/"]},
  ],
  "tests": [
    {"src": "ops1", "accept": ["tag:db:tunnel/tcp/pg"], "deny": ["build-01:files/users/root/"]},
  ],
}
"""

RICH = """{
  // every form, to mutate
  "groups": {"group:ops": ["ops1", "ops2"], "group:dev": []},
  "tagOwners": {"tag:db": ["root", "group:ops"], "tag:web": ["ann"]},
  "admins": ["ann"],
  "acls": [
    {"action": "accept", "src": ["group:ops", "tag:web", "bob@laptop", "carl"], "dst": ["tag:db:tunnel/tcp/pg"]},
    {"action": "accept", "src": ["*"], "dst": ["*:files/shared/", "web-1:files-write/shared/ann/", "*:app/*"]},
    /* proxies */
    {"action": "accept", "src": ["ann"], "dst": ["gw:proxy/10.0.0.0/8:5000-5999", "gw:proxy/*.corp.lan:443",
                                                  "gw:proxy/[::1]:22", "gw:proxy/fd00::/8:*", "*:terminal"]},
  ],
  "tests": [
    {"src": "ops1", "accept": ["tag:db:tunnel/tcp/pg"], "deny": ["db-1:terminal"]},
    {"src": "tag:web", "accept": ["x:app/chat"]},
  ],
}
"""
