"""The playground's picture for docs/playground.md: serve a checkpoint, generate a sample in headless Chromium,
click one of its tokens, and save the page as a PNG.

    python tools/playground_screenshot.py --out_dir=out-akjv-char --prompt="And God said" --out=docs/playground.png

Needs Debian's chromium and chromium-driver (make test installs them where it can).
"""
import dataclasses
import os
import shutil
import time

from configurator import UserError, parse, run
from slm.playground import Background, Playground, ServeConfig, check_port


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class ScreenshotConfig:
    out_dir: str = 'out-akjv-char'  # the checkpoint's out_dir
    prompt: str = 'And God said'  # typed into the prompt box
    max_new_tokens: int = 300     # the sample's length
    seed: int = 1337
    click: int = 40               # the new token whose distribution the chart shows
    port: int = 8765
    out: str = 'docs/playground.png'


def screenshot(cfg):
    chromium, chromedriver = shutil.which('chromium'), shutil.which('chromedriver')
    if not (chromium and chromedriver):
        raise UserError("no chromium and chromedriver here: install Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    check_port('127.0.0.1', cfg.port)
    playground = Playground(ServeConfig(out_dir=cfg.out_dir, port=cfg.port, decode='eager'))
    server = Background(playground, cfg.port)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1400,1000'):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server.url)
        wait.until(lambda d: 'parameters' in d.find_element('id', 'model').text)
        prompt = driver.find_element('id', 'prompt')
        prompt.clear()
        prompt.send_keys(cfg.prompt)
        for key, value in (('max_new_tokens', cfg.max_new_tokens), ('seed', cfg.seed)):
            driver.execute_script("arguments[0].value = arguments[1]", driver.find_element('id', key), str(value))
        driver.find_element('id', 'generate').click()
        wait.until(lambda d: d.find_element('id', 'output').get_attribute('data-done') == 'true')
        driver.find_elements('css selector', '#output .token.new')[cfg.click].click()
        wait.until(lambda d: len(d.find_elements('css selector', '#bars .bar-row')) == 10)
        time.sleep(0.3)
        driver.save_screenshot(cfg.out)
        print(f"wrote {cfg.out}")
    finally:
        driver.quit()
        server.close()


def main(argv=None):
    screenshot(parse(ScreenshotConfig, argv))


if __name__ == '__main__':
    run(main)
