"""Package definition read from settings.ini (the nbdev 2 convention; `nbdev_new` needs the network)."""
from configparser import ConfigParser

import setuptools

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]
if "lib_name" not in cfg: raise SystemExit("setup.py: settings.ini is missing or incomplete (it holds the package's metadata)")

licenses = {"apache2": "Apache-2.0"}   # SPDX; setuptools deprecates the License :: classifiers
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable",
            "6 - Mature", "7 - Inactive"]
lic = licenses[cfg["license"]]
requirements = cfg.get("requirements", "").split()
# `book_requirements = ...` in settings.ini is the extra `motion_nbs[book]`; `all` is every extra, `dev` adds the tools
extras = {k[:-len("_requirements")]: cfg[k].split() for k in cfg if k.endswith("_requirements") and k != "dev_requirements"}
extras["all"] = sorted({r for reqs in extras.values() for r in reqs})
extras["dev"] = cfg.get("dev_requirements", "").split() + extras["all"]
console_scripts = [s for s in cfg.get("console_scripts", "").split() if s]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    license=lic,
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"]) - 1],   # status = 3 is "3 - Alpha"
        "Intended Audience :: " + cfg["audience"].title(),
        "Natural Language :: " + cfg["language"].title(),
        "Programming Language :: Python :: 3",
        "Typing :: Typed",
    ],
    keywords=cfg["keywords"],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,   # py.typed; MANIFEST.in puts settings.ini, LICENSE and CHANGELOG.md in the sdist
    package_data={cfg["lib_name"]: ["py.typed"]},
    license_files=["LICENSE"],
    install_requires=requirements,
    extras_require=extras,
    python_requires=">=" + cfg["min_python"],
    zip_safe=False,
    entry_points={
        "console_scripts": console_scripts,
        "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"],
    },
)
